"""Seed-document filters for HQ: length bounds, exact and near-duplicate removal (MinHash over word
shingles with LSH banding, verified by exact shingle Jaccard), and a pluggable quality scorer.

Every filter is deterministic (stable hashes, ties broken by id), so each of N shard machines
filtering the same input keeps the same documents.
"""
from __future__ import annotations

import collections
import hashlib
import importlib
import re
import zlib
from typing import Callable, Sequence

import numpy as np

from data_gen.parsing import word_count, words

_MERSENNE_31 = (1 << 31) - 1


def normalize(text: str) -> str:
  return re.sub(r"\s+", " ", text.strip().lower())


def length_filter(docs: Sequence[dict], min_words: int, max_words: int | None) -> list[dict]:
  return [d for d in docs if word_count(d["text"]) >= min_words and
          (max_words is None or word_count(d["text"]) <= max_words)]


def exact_dedup(docs: Sequence[dict]) -> list[dict]:
  """Keeps the first document of each normalized text."""
  seen, kept = set(), []
  for d in docs:
    key = hashlib.blake2b(normalize(d["text"]).encode(), digest_size=16).digest()
    if key not in seen:
      seen.add(key)
      kept.append(d)
  return kept


def shingles(text: str, n: int = 5) -> set[str]:
  toks = words(text)
  if len(toks) < n:
    return {" ".join(toks)} if toks else set()
  return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
  if not a and not b:
    return 1.0
  return len(a & b) / len(a | b)


class MinHasher:
  """MinHash signatures from `num_perm` universal hashes (a*x + b) mod (2^31 - 1), vectorized;
  with 31-bit operands every product fits in uint64 exactly."""

  def __init__(self, num_perm: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.a = rng.integers(1, _MERSENNE_31, size=num_perm, dtype=np.uint64)
    self.b = rng.integers(0, _MERSENNE_31, size=num_perm, dtype=np.uint64)

  def signature(self, shingle_set: set[str]) -> np.ndarray:
    if not shingle_set:
      return np.full(len(self.a), _MERSENNE_31, dtype=np.uint64)
    # crc32 is stable across processes and fast (C); 32 bits suffice for MinHash.
    x = np.fromiter((zlib.crc32(s.encode()) for s in shingle_set), dtype=np.uint64,
                    count=len(shingle_set)) % np.uint64(_MERSENNE_31)
    h = (self.a[None, :] * x[:, None] + self.b[None, :]) % np.uint64(_MERSENNE_31)
    return h.min(axis=0)


def near_dedup(docs: Sequence[dict], threshold: float = 0.8, num_perm: int = 64,
               bands: int = 16, shingle_size: int = 5) -> list[dict]:
  """Drops a document whose shingle Jaccard with an earlier kept one is >= `threshold`.
  Candidates come from LSH banding of MinHash signatures; each candidate pair is verified with
  the exact Jaccard, so the banding only costs recall, never precision."""
  if num_perm % bands:
    raise ValueError(f"near_dedup: num_perm ({num_perm}) must be a multiple of bands ({bands})")
  hasher = MinHasher(num_perm)
  rows = num_perm // bands
  buckets: dict[tuple, list[int]] = collections.defaultdict(list)
  kept_shingles: list[set[str]] = []
  kept: list[dict] = []
  for d in docs:
    sh = shingles(d["text"], shingle_size)
    sig = hasher.signature(sh)
    keys = [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(bands)]
    candidates = {k for key in keys for k in buckets.get(key, ())}
    if any(jaccard(sh, kept_shingles[k]) >= threshold for k in candidates):
      continue
    index = len(kept)
    kept.append(d)
    kept_shingles.append(sh)
    for key in keys:
      buckets[key].append(index)
  return kept


def load_callable(spec: str) -> Callable:
  """`package.module:function` -> the function; errors name the spec."""
  if ":" not in spec:
    raise ValueError(f"--quality-scorer {spec!r}: expected 'module:function'")
  module_name, attr = spec.split(":", 1)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"--quality-scorer {spec!r}: cannot import {module_name!r}: {e}") from e
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise ValueError(f"--quality-scorer {spec!r}: {module_name} has no callable {attr!r}")
  return fn


def quality_filter(docs: Sequence[dict], scorer: Callable[[list[str]], Sequence[float]],
                   min_score: float, top_n: int | None, batch_size: int = 256) -> list[dict]:
  """Scores documents with `scorer(texts) -> scores` (batched, e.g. an educational-quality
  classifier), keeps score >= min_score, then the `top_n` best (ties broken by id). The score
  is stored on each kept document as `quality_score`."""
  scored = []
  for start in range(0, len(docs), batch_size):
    chunk = docs[start:start + batch_size]
    scores = list(scorer([d["text"] for d in chunk]))
    if len(scores) != len(chunk):
      raise ValueError(f"quality scorer returned {len(scores)} scores for {len(chunk)} texts")
    for d, s in zip(chunk, scores):
      if float(s) >= min_score:
        scored.append({**d, "quality_score": float(s)})
  scored.sort(key=lambda d: (-d["quality_score"], d["id"]))
  return scored[:top_n] if top_n is not None else scored


def lexical_overlap(a: str, b: str) -> float:
  """Jaccard similarity of the content-word sets of two texts (stopwords and 1-2 letter words
  dropped), 0..1."""
  sa = {w for w in words(a) if len(w) > 2 and w not in STOPWORDS}
  sb = {w for w in words(b) if len(w) > 2 and w not in STOPWORDS}
  if not sa or not sb:
    return 0.0
  return len(sa & sb) / len(sa | sb)


STOPWORDS = frozenset("""
the and for are but not you all any can had her was one our out has him his how its may new now
old see two way who did get let say she too use that with have this will your from they know want
been good much some time very when come here just like long make many more only over such take
than them well were what which their there these those would about after again also because
before being between both could does doing down each few further into itself most other same
should then through under until while why whom where also into onto upon within without
""".split())
