"""Memory of the HQ seed filter per million documents.

    python bench/datagen_seed_filter.py [--docs 100000] [--words 200] [--parts index,rss]
    python bench/datagen_seed_filter.py --parts rss --docs 100000 --words 500 [--near-dup]

index: streams --docs synthetic documents (--words words each, drawn from a 20k-word vocabulary;
every 10th one is a near duplicate of an earlier document, one word in 50 changed) through the
streaming length / exact / near-duplicate filters, and measures with tracemalloc the Python and
numpy memory the near-duplicate index holds at the end (not the documents, which are generated
on the fly and dropped). Prints documents/s, the memory, and the memory scaled to a million
documents. The reference, measured in the same run on the first --reference-docs documents, is
an earlier filter's state: every kept document's 5-gram shingle set.

rss: writes the same documents (plus an exact copy every 20th) as a JSON-lines file, each with a
`task` field cycling over the 12 BRIGHT tasks, and runs the whole seed filter on it as a user
would (`python -m data_gen filter`, the published selection: exact dedup per task, a quality
scorer's score >= 1, --top-n per task; the scorer here is a cheap hash of the text, not a
model; --near-dup adds our near-duplicate filter) in a child process, whose peak resident set
size (getrusage) is the figure. It is printed with the bound the filter must meet, at most
4 GiB per million 500-word documents, scaled to --docs, and with the growth over a 12-document
run of the same command (interpreter and imports) scaled to a million. The bound is stated for
500-word documents: run this part with --words 500.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_gen import filters  # noqa: E402
from reasonir_jax.eval.bright_data import TASKS  # noqa: E402

BOUND_PER_MILLION = 4 * 2**30  # bytes of peak RSS allowed per million 500-word documents
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_docs(n: int, words: int, seed: int = 0):
  rng = random.Random(seed)
  vocab = [f"w{i}" for i in range(20000)]
  recent = []
  for i in range(n):
    if i % 10 == 9 and recent:
      base = rng.choice(recent).split()
      for k in range(0, len(base), 50):
        base[k] = rng.choice(vocab)
      text = " ".join(base)
    else:
      text = " ".join(rng.choices(vocab, k=words))
      recent = (recent + [text])[-100:]
    yield {"id": f"d{i:08d}", "text": text}


def hashed_quality(texts):
  """A stand-in quality scorer for the benchmark: 0..5 from a hash of the text."""
  return [zlib.crc32(t.encode()) % 501 / 100 for t in texts]


def _peak_rss_of(cmd: list[str]) -> tuple[int, float]:
  """(peak RSS in bytes, seconds) of a child process; it must succeed."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([_REPO, os.path.dirname(__file__)])}
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
  return usage.ru_maxrss * 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def rss_part(args) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    def write(path, n):
      with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(synthetic_docs(n, args.words)):
          d["task"] = TASKS[i % len(TASKS)]
          f.write(json.dumps(d) + "\n")
          if i % 20 == 19:  # an exact copy, same task, another id
            f.write(json.dumps({**d, "id": d["id"] + "c"}) + "\n")
      return os.path.getsize(path)

    def filter_cmd(path):
      cmd = [sys.executable, "-m", "data_gen", "filter", "--input", path, "--output",
             path + ".kept.jsonl", "--quality-scorer", "datagen_seed_filter:hashed_quality",
             "--top-n", str(args.top_n), "--log-level", "ERROR"]
      return cmd + (["--near-dup-threshold", "0.8"] if args.near_dup else [])

    small, big = os.path.join(tmp, "small.jsonl"), os.path.join(tmp, "seeds.jsonl")
    write(small, len(TASKS))
    size = write(big, args.docs)
    base_rss, _ = _peak_rss_of(filter_cmd(small))
    peak, elapsed = _peak_rss_of(filter_cmd(big))
    with open(big + ".kept.jsonl.report.json") as f:
      report = json.load(f)
  n = report["input"]
  bound = BOUND_PER_MILLION * n / 1e6
  per_million = base_rss + (peak - base_rss) / n * 1e6
  print(f"seed filter (python -m data_gen filter, exact dedup per task, scorer, --top-n "
        f"{args.top_n} per task{', near dedup' if args.near_dup else ''}): {n} documents of "
        f"{args.words} words ({size / 2**20:.0f} MiB of JSON lines) in {elapsed:.0f}s, "
        f"{n / elapsed:.0f} documents/s; kept {report['after_top_n']}")
  print(f"  peak RSS {peak / 2**20:.0f} MiB; bound for {n} documents (4 GiB per million 500-word documents) "
        f"{bound / 2**20:.0f} MiB: {'within' if peak <= bound else 'OVER'} the bound")
  print(f"  12-document run {base_rss / 2**20:.0f} MiB; growth {(peak - base_rss) / n:.0f} "
        f"bytes/document -> {per_million / 2**30:.2f} GiB per million (bound 4 GiB): "
        f"{'within' if per_million <= BOUND_PER_MILLION else 'OVER'}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--docs", type=int, default=100_000)
  p.add_argument("--words", type=int, default=200)
  p.add_argument("--reference-docs", type=int, default=5_000)
  p.add_argument("--parts", default="index,rss", help="index, rss, or both")
  p.add_argument("--top-n", type=int, default=1000, help="rss: documents kept per task")
  p.add_argument("--near-dup", action="store_true", help="rss: add the near-duplicate filter")
  args = p.parse_args(argv)
  parts = set(args.parts.split(","))
  if not parts <= {"index", "rss"}:
    p.error(f"--parts {args.parts!r}: choose from index, rss")
  if "index" in parts:
    index_part(args)
  if "rss" in parts:
    rss_part(args)


def index_part(args) -> None:
  tracemalloc.start()
  index = filters.NearDupIndex(threshold=0.8)
  exact = filters.exact_dedup(filters.length_filter(synthetic_docs(args.docs, args.words), 1,
                                                     None))
  start = time.perf_counter()
  kept = sum(index.add_if_new(d["text"]) for d in exact)
  elapsed = time.perf_counter() - start
  held, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  per_million = held / args.docs * 1e6
  print(f"near-dup filter: {args.docs} documents ({args.words} words), kept {kept}, "
        f"{args.docs / elapsed:.0f} documents/s")
  print(f"  held at the end {held / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB) = "
        f"{held / args.docs:.0f} bytes/document -> {per_million / 2**30:.2f} GiB per million")

  tracemalloc.start()
  shingle_sets = [filters.shingles(d["text"])
                  for d in synthetic_docs(args.reference_docs, args.words)]
  ref_held, _ = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  del shingle_sets
  ref_per_doc = ref_held / args.reference_docs
  print(f"reference (every kept document's shingle set, {args.reference_docs} documents): "
        f"{ref_per_doc:.0f} bytes/document -> {ref_per_doc * 1e6 / 2**30:.1f} GiB per million; "
        f"ratio x{ref_per_doc / (held / args.docs):.0f}")


if __name__ == "__main__":
  main()
