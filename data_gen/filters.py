"""Seed-document filters for HQ, streaming and in bounded memory: length bounds, exact and
near-duplicate removal (MinHash signatures over word shingles, LSH banding, candidates confirmed
by the signatures' estimated Jaccard), and quality selection: a scorer (a transformers
sequence-classification model the user gives by path, FineWeb-Edu classifier style, or any
`module:function`), a minimum score, and the top N per BRIGHT task.

Every filter is deterministic (stable hashes, ties broken by id), so each of N shard machines
filtering the same input keeps the same documents.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import re
import zlib
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from data_gen.parsing import word_count, words

_MERSENNE_31 = (1 << 31) - 1


def normalize(text: str) -> str:
  return re.sub(r"\s+", " ", text.strip().lower())


def length_filter(docs: Iterable[dict], min_words: int, max_words: int | None) -> Iterator[dict]:
  for d in docs:
    n = word_count(d["text"])
    if n >= min_words and (max_words is None or n <= max_words):
      yield d


def exact_dedup(docs: Iterable[dict]) -> Iterator[dict]:
  """Keeps (streaming) the first document of each normalized text within its task (documents
  without a `task` share one group), as the public pipeline deduplicates each BRIGHT corpus on
  its own; 8-byte hashes in memory."""
  seen = set()
  for d in docs:
    keyed = f"{d.get('task') or ''}\x00{normalize(d['text'])}".encode()
    key = int.from_bytes(hashlib.blake2b(keyed, digest_size=8).digest(), "little")
    if key not in seen:
      seen.add(key)
      yield d


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


class NearDupIndex:
  """Bounded-memory near-duplicate index over kept documents: one uint32 MinHash signature row
  per document (num_perm * 4 bytes) and, per LSH band, the band's 64-bit hash -> the first kept
  document in that bucket, in sorted numpy arrays (12 bytes an entry) plus a small dict of
  recent entries merged into them now and then. No shingle set is kept: a candidate is
  confirmed when the signatures' estimated Jaccard (the fraction of equal MinHash values) is
  >= the threshold. About 1 KB per kept document at 128 permutations and 32 bands (measured by
  bench/datagen_seed_filter.py), instead of every kept document's shingles (~80 KB)."""

  _MERGE_AT = 1 << 16  # recent entries held in a dict before a merge into the sorted arrays

  def __init__(self, threshold: float = 0.8, num_perm: int = 128, bands: int = 32,
               shingle_size: int = 5, seed: int = 0):
    if num_perm % bands:
      raise ValueError(f"near_dedup: num_perm ({num_perm}) must be a multiple of bands ({bands})")
    self.threshold = threshold
    self.hasher = MinHasher(num_perm, seed)
    self.bands, self.rows = bands, num_perm // bands
    self.shingle_size = shingle_size
    self._keys = np.zeros(0, dtype=np.uint64)  # sorted band hashes
    self._owner = np.zeros(0, dtype=np.uint32)  # their first kept document
    self._recent: dict[int, int] = {}
    self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
    self.size = 0

  def signature(self, text: str) -> np.ndarray:
    return self.hasher.signature(shingles(text, self.shingle_size)).astype(np.uint32)

  def _band_keys(self, sig: np.ndarray) -> np.ndarray:
    view = sig.reshape(self.bands, self.rows)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes() + bytes([b]),
                                                    digest_size=8).digest(), "little")
                     for b, row in enumerate(view)], dtype=np.uint64)

  def _lookup(self, keys: np.ndarray) -> list[int | None]:
    found: list[int | None] = [self._recent.get(int(k)) for k in keys]
    if len(self._keys):
      pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
      hit = self._keys[pos] == keys
      for b in np.flatnonzero(hit):
        found[b] = int(self._owner[pos[b]])
    return found

  def _merge(self) -> None:
    keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
    owners = np.fromiter(self._recent.values(), dtype=np.uint32, count=len(self._recent))
    keys, owners = np.concatenate([self._keys, keys]), np.concatenate([self._owner, owners])
    order = np.argsort(keys, kind="stable")
    self._keys, self._owner = keys[order], owners[order]
    self._recent.clear()

  def add_if_new(self, text: str) -> bool:
    """True (and the document is indexed) unless it near-duplicates a kept one."""
    sig = self.signature(text)
    keys = self._band_keys(sig)
    found = self._lookup(keys)
    for k in {f for f in found if f is not None}:
      if (self._sigs[k] == sig).mean() >= self.threshold:
        return False
    if self.size == len(self._sigs):
      self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
    self._sigs[self.size] = sig
    for key, f in zip(keys, found):
      if f is None:  # a bucket keeps its first kept document
        self._recent.setdefault(int(key), self.size)
    self.size += 1
    if len(self._recent) >= self._MERGE_AT:
      self._merge()
    return True


def near_dedup(docs: Iterable[dict], threshold: float = 0.8, num_perm: int = 128,
               bands: int = 32, shingle_size: int = 5) -> Iterator[dict]:
  """Drops (streaming) a document whose estimated 5-gram shingle Jaccard with an earlier kept
  one is >= `threshold`; candidates come from LSH banding of MinHash signatures."""
  index = NearDupIndex(threshold, num_perm, bands, shingle_size)
  for d in docs:
    if index.add_if_new(d["text"]):
      yield d


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


def scored(docs: Iterable[dict], scorer: Callable[[list[str]], Sequence[float]],
           batch_size: int = 256) -> Iterator[dict]:
  """The documents (streaming) with `quality_score` = `scorer(texts)`, called on batches."""
  for chunk in _chunks(docs, batch_size):
    scores = list(scorer([d["text"] for d in chunk]))
    if len(scores) != len(chunk):
      raise ValueError(f"quality scorer returned {len(scores)} scores for {len(chunk)} texts")
    for d, s in zip(chunk, scores):
      s = float(s)
      if not math.isfinite(s):
        raise ValueError(f"quality scorer gave document {d['id']!r} the score {s}")
      yield {**d, "quality_score": s}


def top_per_task(docs: Iterable[dict], key: Callable[[dict], tuple], top_n: int | None,
                 slack: int = 256) -> list[dict]:
  """The `top_n` first documents by `key` within each task (documents without a `task` form one
  group; None: all of them), grouped by task in name order. Streaming: at most ~2 * top_n
  documents per task are held."""
  groups: dict[str, list[dict]] = {}
  for d in docs:
    group = groups.setdefault(str(d.get("task") or ""), [])
    group.append(d)
    if top_n is not None and len(group) > 2 * top_n + slack:
      group.sort(key=key)
      del group[top_n:]
  out = []
  for task in sorted(groups):
    group = sorted(groups[task], key=key)
    out += group if top_n is None else group[:top_n]
  return out


def by_score(d: dict) -> tuple:
  """Best score first, ties broken by id."""
  return -d["quality_score"], d["id"]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


class EduQualityScorer:
  """An educational-quality classifier (FineWeb-Edu style) run through transformers:
  `AutoModelForSequenceClassification` + its tokenizer from the directory (or hub name) the user
  gives; nothing is shipped. A one-logit (regression) head's raw logit is the score, unclipped and
  unrounded, as the public seed filter reads FineWeb-Edu's classifier (about 0..5; it keeps raw
  score >= 1); a head with k labels gives the expected label index sum_i i * p_i. Texts are cut to
  `max_length` tokens."""

  def __init__(self, path: str, batch_size: int = 32, max_length: int = 512,
               device: str | None = None):
    import torch
    import transformers
    self.torch = torch
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
      self.model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise ValueError(f"--quality-model {path!r}: cannot load a sequence classifier and its "
                       f"tokenizer there ({e})") from e
    self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    self.model.to(self.device).eval()
    if self.tokenizer.pad_token_id is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token
      self.model.config.pad_token_id = self.tokenizer.pad_token_id
    self.batch_size, self.max_length = batch_size, max_length

  def __call__(self, texts: list[str]) -> list[float]:
    torch = self.torch
    scores: list[float] = []
    for chunk in _chunks(texts, self.batch_size):
      enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                           max_length=self.max_length).to(self.device)
      with torch.no_grad():
        logits = self.model(**enc).logits.float()
      if logits.shape[-1] == 1:
        scores += logits[:, 0].tolist()
      else:
        probs = logits.softmax(-1)
        scores += (probs * torch.arange(logits.shape[-1], dtype=probs.dtype)).sum(-1).tolist()
    return scores


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
