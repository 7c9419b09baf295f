"""Input pipeline throughput: training rows/s delivered as tokenized, padded host batches.

  python bench/input_pipeline.py [--rows 4096] [--batch 64] [--tokens 512] [--batches 40]

Each row has a query, a positive and a negative of about `--tokens` tokens (cut to max_length
= --tokens), tokenized with the shipped sample tokenizer. Reference measured in the same run:
tokenizing the same texts with the bare tokenizer (one batched call, no reading, parsing,
sampling or padding), i.e. the ceiling for this machine; the pipeline figure is reported as a
ratio of it, in wall-clock rows/s and in rows per CPU-second (independent of other load on the
machine, and the figure to size a host's tokenizer threads with).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasonir_jax.assets.sample_facts import DOMAINS  # noqa: E402
from reasonir_jax.configs import load_config  # noqa: E402
from reasonir_jax.data.pipeline import make_host_iterator  # noqa: E402
from reasonir_jax.data.sample import sample_tokenizer_dir  # noqa: E402
from reasonir_jax.data.schema import TrainingRow  # noqa: E402
from reasonir_jax.data.writer import write_rows  # noqa: E402
from reasonir_jax.tokenization import PromptTokenizer  # noqa: E402


def make_rows(n: int, tokens: int, tok) -> list[TrainingRow]:
  import random
  rng = random.Random(0)
  sentences = [s for fs in DOMAINS.values() for f in fs
               for s in (f["explanation"] + " " + f["distractor"]).split(". ")]
  # Characters per token of this corpus, to aim each text at ~`tokens` tokens.
  probe = " ".join(sentences)
  chars_per_token = len(probe) / len(tok.tokenizer(probe, add_special_tokens=False)["input_ids"])
  target = int(tokens * chars_per_token * 1.05)

  def text():
    parts, size = [], 0
    while size < target:
      s = rng.choice(sentences)
      parts.append(s)
      size += len(s) + 2
    return ". ".join(parts)

  return [TrainingRow(row_id=str(i), source="bench", query=text(), positives=[text()],
                      negatives=[text()], query_instruction="Given a biology post, retrieve relevant passages that help answer the post")
          for i in range(n)]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=4096)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--tokens", type=int, default=512)
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--workers", type=int, default=2, help="tokenizer threads for the last setting")
  args = p.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  tok = PromptTokenizer(sample_tokenizer_dir())
  rows = make_rows(args.rows, args.tokens, tok)
  with tempfile.TemporaryDirectory() as d:
    write_rows(rows, d, "bench", 8)
    c = load_config("tiny")
    c.data.sources = f"bench={d}/bench-*.tfrecord"
    c.data.query_max_length = c.data.passage_max_length = c.data.max_length = args.tokens
    c.data.bucket_lengths = (128, 256, 512, 1024)
    c.train.global_batch_size = args.batch

    # Reference: the bare tokenizer on the same number of texts (3 per row).
    texts = [t for r in rows[: args.batch * 8] for t in (r.query, r.positives[0], r.negatives[0])]
    t0, c0 = time.perf_counter(), time.process_time()
    ids = tok.tokenizer(texts, add_special_tokens=False)["input_ids"]
    ref_rows_s = len(texts) / 3 / (time.perf_counter() - t0)
    ref_rows_cpu_s = len(texts) / 3 / (time.process_time() - c0)
    mean_tokens = sum(min(len(i), args.tokens) for i in ids) / len(ids)

    results = {}
    settings = [(0, 0), (args.prefetch, 0), (args.prefetch, args.workers)]
    for prefetch, workers in settings:
      it = make_host_iterator(c, tok, process_index=0, process_count=1, prefetch=prefetch,
                              num_workers=workers)
      next(it)  # warm-up (thread start, caches)
      t0, c0 = time.perf_counter(), time.process_time()
      for i in range(args.batches):
        b = next(it)
        # Stand-in for a training step's host work, so prefetching has something to overlap.
        _ = int(b["passage"]["attention_mask"].sum())
        if (i + 1) % 10 == 0:
          rate = (i + 1) * args.batch / (time.perf_counter() - t0)
          print(f"  prefetch={prefetch} workers={workers}: {i + 1}/{args.batches} batches, {rate:,.0f} rows/s", flush=True)
      n = args.batches * args.batch
      results[(prefetch, workers)] = (n / (time.perf_counter() - t0), n / (time.process_time() - c0))
      shape = (b["query"]["input_ids"].shape, b["passage"]["input_ids"].shape)
      if hasattr(it, "close"):
        it.close()
  print(f"rows: query + positive + negative, mean {mean_tokens:.0f} tokens per text (max {args.tokens}); "
        f"batch {args.batch}; last batch shapes {shape}; cpus {os.cpu_count()}")
  # CPU-seconds (all threads of this process) do not depend on what else runs on the machine.
  print(f"reference (bare batched tokenizer): {ref_rows_s:,.0f} rows/s, {ref_rows_cpu_s:,.0f} rows per CPU-second")
  for (prefetch, workers), (r, r_cpu) in results.items():
    print(f"pipeline prefetch={prefetch} workers={workers}: {r:,.0f} rows/s = {r / ref_rows_s:.2f} x reference "
          f"({3 * r * mean_tokens / 1e6:.2f} M tokens/s); {r_cpu:,.0f} rows per CPU-second = "
          f"{r_cpu / ref_rows_cpu_s:.2f} x reference; 1,000 rows/s needs ~{1000 / r_cpu:.1f} cores")


if __name__ == "__main__":
  main()
