"""Benchmark of the evaluation path: corpus encoding (documents/s) and exact blocked top-k.

    python bench/retrieval.py [--num-docs 2048] [--corpus 400000] [--dim 4096] [--queries 1000] [--mesh-compare]

1. Encoding: the `reasonir_jax/configs/tiny.py` model dimensions with random weights, documents of ~100
   tokens (max length 128), through `Encoder.encode`; the reference, measured in the same run,
   is transformers' PyTorch `LlamaModel` of the same dimensions on the same batches.
2. Retrieval: exact top-100 for 1,000 random queries against a random 400k x 4096 corpus,
   streamed in blocks through `retrieval.exact_top_k`. The corpus is generated block by block and
   held on the host as float16 (3.3 GB for 400k x 4096; float32 would need 6.6 GB); each block is
   cast to float32 on device. The reference is numpy (float32 matmul + argpartition) on the first
   `--reference-blocks` blocks, extrapolated linearly. Peak RSS is reported before and after
   the top-k, so the working memory of the top-k shows apart from the corpus itself.
3. Mesh (`--mesh-compare`): the same documents encoded through `bright.load_encoder` on a pure
   data-parallel mesh (-1,1,1, the `--mesh auto` choice when the weights fit one chip) and on the
   weights-sharded mesh (1,-1,1) over every device present; then the projected corpus-encoding
   wall time of all 12 BRIGHT tasks from the data-parallel rate (a shared corpus counted once).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tokenizers thread pool otherwise competes with both frameworks' compute threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def random_docs(n: int, words_per_doc: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(3000)]
  return [" ".join(rng.choice(vocab, size=words_per_doc)) for _ in range(n)]


def bench_encoding(num_docs: int, batch_size: int, max_length: int) -> None:
  import jax
  import torch
  import transformers
  from flax import nnx

  from reasonir_jax.configs import load_config
  from reasonir_jax.encoder import Encoder
  from reasonir_jax.model import LlamaEncoder, ModelConfig
  from reasonir_jax.tokenization import load_tokenizer, train_tokenizer

  cfg = load_config("tiny").model
  model_cfg = ModelConfig.from_config(cfg)
  docs = random_docs(num_docs, words_per_doc=60)
  with tempfile.TemporaryDirectory() as tok_dir:
    train_tokenizer(random_docs(500, 60, seed=1), vocab_size=cfg.vocab_size, out_dir=tok_dir)
    tokenizer = load_tokenizer(tok_dir)
  encoder = Encoder(LlamaEncoder(model_cfg, rngs=nnx.Rngs(0)), tokenizer, model_cfg)
  encoder.encode(docs, batch_size=batch_size, max_length=max_length, show_progress=False)  # compile buckets
  t0 = time.perf_counter()
  encoder.encode(docs, batch_size=batch_size, max_length=max_length, show_progress=False)
  ours = num_docs / (time.perf_counter() - t0)

  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
  torch.manual_seed(0)
  ref_model = transformers.LlamaModel(hf_cfg).eval()
  tokenizer.padding_side = "right"
  with torch.no_grad():
    for _ in range(2):  # the first pass warms up
      t0 = time.perf_counter()
      for s in range(0, num_docs, batch_size):
        batch = tokenizer(["<|embed|>\n" + d for d in docs[s:s + batch_size]], padding=True,
                          truncation=True, max_length=max_length, return_tensors="pt")
        hidden = ref_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
  ref = num_docs / (time.perf_counter() - t0)
  print(f"encoding (reasonir_jax/configs/tiny.py dims, {jax.device_count()} device(s), {num_docs} docs of ~100 tokens, "
        f"batch {batch_size}, max_length {max_length}):")
  print(f"  reasonir_jax Encoder.encode: {ours:8.1f} docs/s")
  print(f"  torch LlamaModel (reference): {ref:8.1f} docs/s   ratio ours/ref = {ours / ref:.2f}")


def bench_mesh_encoding(num_docs: int, batch_size: int, max_length: int) -> None:
  import shutil

  import jax
  import torch
  import transformers

  from reasonir_jax.configs import load_config
  from reasonir_jax.eval import bright, encode_plan
  from reasonir_jax.tokenization import train_tokenizer

  cfg = load_config("tiny").model
  docs = random_docs(num_docs, words_per_doc=60)
  rates = {}
  with tempfile.TemporaryDirectory() as model_dir:
    train_tokenizer(random_docs(500, 60, seed=1), vocab_size=cfg.vocab_size, out_dir=model_dir)
    torch.manual_seed(0)
    transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)).save_pretrained(model_dir)
    for mesh in ("-1,1,1", "1,-1,1"):
      encoder = bright.load_encoder(model_dir, "float32", mesh)
      encoder.encode(docs, batch_size=batch_size, max_length=max_length, show_progress=False)  # compile
      t0 = time.perf_counter()
      encoder.encode(docs, batch_size=batch_size, max_length=max_length, show_progress=False)
      rates[mesh] = num_docs / (time.perf_counter() - t0)
    shutil.rmtree(model_dir, ignore_errors=True)
  print(f"mesh (reasonir_jax/configs/tiny.py dims, {jax.device_count()} device(s), {num_docs} docs, batch {batch_size}):")
  print(f"  data parallel -1,1,1:   {rates['-1,1,1']:8.1f} docs/s")
  print(f"  weights sharded 1,-1,1: {rates['1,-1,1']:8.1f} docs/s   ratio dp/sharded = "
        f"{rates['-1,1,1'] / rates['1,-1,1']:.2f}")
  print(encode_plan.format_projection(rates["-1,1,1"], encode_plan.describe_devices()))


class RandomCorpus:
  """A float16 [n, dim] corpus filled block by block (no float32 copy of the whole thing)."""

  def __init__(self, n: int, dim: int, seed: int = 0, block: int = 32768):
    self.data = np.empty((n, dim), dtype=np.float16)
    rng = np.random.default_rng(seed)
    for s in range(0, n, block):
      x = rng.standard_normal((min(block, n - s), dim), dtype=np.float32)
      x /= np.linalg.norm(x, axis=1, keepdims=True)
      self.data[s:s + len(x)] = x


def numpy_top_k(q, corpus, k, block_size, num_blocks):
  best_s = np.full((len(q), 0), -np.inf, np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  for b in range(num_blocks):
    blk = corpus[b * block_size:(b + 1) * block_size].astype(np.float32)
    s = q @ blk.T
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    cat_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
    cat_i = np.concatenate([best_i, part + b * block_size], 1)
    top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
  return best_s, best_i


def bench_top_k(n: int, dim: int, n_q: int, k: int, block_size: int, reference_blocks: int) -> None:
  import jax

  from reasonir_jax.eval import retrieval

  t0 = time.perf_counter()
  corpus = RandomCorpus(n, dim).data
  gen_s = time.perf_counter() - t0
  rss_corpus = peak_rss_gib()
  q = np.random.default_rng(1).standard_normal((n_q, dim), dtype=np.float32)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  # Warm-up compiles the two block shapes (full and last) on a small slice.
  retrieval.exact_top_k(q[:8], corpus[:block_size + 1], k, block_size=block_size)
  t0 = time.perf_counter()
  scores, idx = retrieval.exact_top_k(q, corpus, k, block_size=block_size, query_block=n_q)
  ours = time.perf_counter() - t0
  rss_after = peak_rss_gib()
  t0 = time.perf_counter()
  ref_s, _ = numpy_top_k(q, corpus, k, block_size, reference_blocks)
  ref = (time.perf_counter() - t0) * (n / (reference_blocks * block_size))
  # Spot check: the first reference blocks' best scores can never beat the full top-k.
  assert np.all(np.sort(ref_s, 1)[:, -1] <= scores[:, 0] + 1e-3)
  working = (block_size * dim * 2 + block_size * dim * 4 + n_q * block_size * 4 * 2) / 2**30
  print(f"exact top-{k}: {n_q} queries x {n} docs x {dim} dims, blocks of {block_size}, "
        f"{jax.device_count()} device(s), corpus float16 on host ({n * dim * 2 / 2**30:.2f} GiB, "
        f"generated in {gen_s:.1f}s):")
  print(f"  reasonir_jax exact_top_k: {ours:8.2f} s  ({n * n_q * dim * 2 / ours / 1e9:.1f} GFLOP/s)")
  print(f"  numpy blocked (reference, {reference_blocks} blocks extrapolated): {ref:8.2f} s   "
        f"ratio ref/ours = {ref / ours:.2f}")
  print(f"  peak RSS: {rss_corpus:.2f} GiB after building the corpus, {rss_after:.2f} GiB after top-k "
        f"(+{rss_after - rss_corpus:.2f} GiB); per-step working set by design ~{working:.2f} GiB")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num-docs", type=int, default=2048, help="documents encoded")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--corpus", type=int, default=400_000)
  parser.add_argument("--dim", type=int, default=4096)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--block-size", type=int, default=32768)
  parser.add_argument("--reference-blocks", type=int, default=2)
  parser.add_argument("--skip-encoding", action="store_true")
  parser.add_argument("--skip-top-k", action="store_true")
  parser.add_argument("--mesh-compare", action="store_true", help="data parallel vs sharded encoding")
  args = parser.parse_args()
  if args.mesh_compare:
    bench_mesh_encoding(args.num_docs, args.batch_size, args.max_length)
  if not args.skip_encoding:
    bench_encoding(args.num_docs, args.batch_size, args.max_length)
  if not args.skip_top_k:
    bench_top_k(args.corpus, args.dim, args.queries, args.k, args.block_size, args.reference_blocks)


if __name__ == "__main__":
  main()
