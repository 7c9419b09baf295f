"""Memory of the seed near-duplicate filter (data_gen.filters.NearDupIndex) per million documents.

    python bench/datagen_seed_filter.py [--docs 100000] [--words 200]

Streams --docs synthetic documents (--words words each, drawn from a 20k-word vocabulary;
every 10th one is a near duplicate of an earlier document, one word in 50 changed) through the
streaming length / exact / near-duplicate filters, and measures with tracemalloc the Python and
numpy memory the filters hold at the end (the kept-set index, not the documents, which are
generated on the fly and dropped). Prints documents/s, the memory, and the memory scaled to a
million documents. The reference, measured in the same run on the first --reference-docs
documents, is the previous filter's state: every kept document's 5-gram shingle set.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_gen import filters  # noqa: E402


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


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--docs", type=int, default=100_000)
  p.add_argument("--words", type=int, default=200)
  p.add_argument("--reference-docs", type=int, default=5_000)
  args = p.parse_args(argv)

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
