"""On-disk embedding cache for corpora, written in chunks so an interrupted encoding resumes.

A cache entry is a directory named by a hash of what determines the embeddings (model, corpus
contents, max length, template, dtypes, the encoder's recipe; never a task name, so tasks sharing
a corpus share one entry): `meta.json` plus `chunk_00000.npy`, `chunk_00001.npy`, ...
Each chunk is written to a temporary name and renamed, so a killed run leaves only whole chunks;
the next run encodes the missing ones. A second run (other queries, a reranker) encodes nothing.
Embeddings are stored as float32 by default, as the reference keeps them (the cosine also feeds
the reranker's 0.5/0.5 mix): 4 bytes x dim per text, 6.8 GB for ReasonIR-8B's 4096-d embeddings of
BRIGHT's largest corpus (leetcode, ~414k documents). `--cache-dtype float16` halves that (2 bytes x
dim, 3.4 GB there); its rounding, about 1e-3 relative, can reorder near ties. Chunks go to the
device in their stored dtype and are cast to float32 there by the retrieval. The storage dtype is
part of the entry's key, so an entry of one dtype is never read for the other; float16 entries
written before float32 became the default load with `--cache-dtype float16`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from reasonir_jax import paths

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float32", "float16")
DEFAULT_STORAGE_DTYPE = "float32"


def add_dtype_flag(parser) -> None:
  """Adds `--cache-dtype` (the storage dtype of the embedding cache) to an argparse parser."""
  parser.add_argument("--cache-dtype", choices=STORAGE_DTYPES, default=DEFAULT_STORAGE_DTYPE,
                      help="embedding cache storage: float32 (default, as the reference; 4 bytes x dim "
                      "per text) or float16 (half the disk and host memory)")


def encoder_key(encoder) -> dict:
  """What of the encoder beyond its weights decides document embeddings: the compute dtype and
  the recipe (template, pooling, causal attention; an Encoder loaded with another `recipe` than
  its files say has the same weights). The recipe is named only when it is not ReasonIR's, so the
  entries written before it was part of the key stay valid for the recipe they were made with."""
  from reasonir_jax.model.config import RECIPES  # pylint: disable=import-outside-toplevel
  cfg = getattr(encoder, "model_cfg", None)
  key = {"dtype": str(getattr(cfg, "dtype", ""))}
  if cfg is not None:
    recipe = {name: getattr(cfg, name) for name in RECIPES["reasonir"]}
    if recipe != RECIPES["reasonir"]:
      key["recipe"] = recipe
  return key


def document_key(model_key: str, fingerprint: str, max_length: int, encoder) -> dict:
  """The cache key of a corpus's document embeddings (no instruction): one for eval.bright and
  the datastore, so both find the same entry for the same model, corpus and encoder."""
  return {"model": model_key, "corpus": fingerprint, "max_length": max_length,
          "template": "document", **encoder_key(encoder)}


def corpus_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
  h = hashlib.sha256()
  for i, t in zip(ids, texts):
    h.update(i.encode("utf-8", "surrogatepass") + b"\0" + t.encode("utf-8", "surrogatepass") + b"\0")
  return h.hexdigest()


def _files_signature(directory: str) -> list:
  out = []
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      st = os.stat(os.path.join(root, name))
      out.append([os.path.relpath(os.path.join(root, name), directory), st.st_size, int(st.st_mtime)])
  return out


def model_fingerprint(path: str) -> str:
  """Identifies the weights a model path resolves to: an HF directory's files, or a training
  workdir's latest checkpoint (so a newer checkpoint gets a new cache entry)."""
  path = os.path.realpath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--model: {path} does not exist")
  ckpt_root = os.path.join(path, "checkpoints")
  if os.path.isdir(ckpt_root):
    steps = [d for d in os.listdir(ckpt_root) if re.fullmatch(r"\d+", d)]
    if steps:
      latest = os.path.join(ckpt_root, max(steps, key=int))
      sig = [latest, _files_signature(latest)]
    else:
      sig = [ckpt_root, _files_signature(ckpt_root)]
  elif os.path.isdir(path):
    sig = [path, [f for f in _files_signature(path) if os.sep not in f[0]]]
  else:
    sig = [path, os.path.getsize(path), int(os.path.getmtime(path))]
  return hashlib.sha256(json.dumps(sig).encode()).hexdigest()[:16]


class ChunkedEmbeddings:
  """Read-only [n, dim] view over the chunk files (memory-mapped), sliceable by rows."""

  def __init__(self, paths: Sequence[str]):
    self.chunks = [np.load(p, mmap_mode="r") for p in paths]
    self.starts = np.cumsum([0] + [len(c) for c in self.chunks])
    self.dim = self.chunks[0].shape[1] if self.chunks else 0

  def __len__(self) -> int:
    return int(self.starts[-1])

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), self.dim)

  def __getitem__(self, s: slice) -> np.ndarray:
    if not isinstance(s, slice) or s.step not in (None, 1):
      raise TypeError("ChunkedEmbeddings supports contiguous row slices only")
    start, stop, _ = s.indices(len(self))
    parts = []
    for c, c0 in zip(self.chunks, self.starts[:-1]):
      lo, hi = max(start - c0, 0), min(stop - c0, len(c))
      if lo < hi:
        parts.append(np.asarray(c[lo:hi]))  # the stored dtype: float16 goes to the device as is
    if not parts:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

  def to_array(self) -> np.ndarray:
    return self[0:len(self)].astype(np.float32)


class EmbeddingCache:
  """One cache entry per `key` (a JSON-able mapping); `encode(texts) -> [n, dim]` fills it."""

  def __init__(self, root: str, key: Mapping, chunk_size: int = 8192, name: str = "corpus",
               storage_dtype: str = DEFAULT_STORAGE_DTYPE):
    if storage_dtype not in STORAGE_DTYPES:
      raise ValueError(f"--cache-dtype {storage_dtype!r}: choose float32 or float16")
    self.storage_dtype = np.dtype(storage_dtype)
    self.dir = self.entry_dir(root, key, name, storage_dtype)
    self.key = dict(key) | {"storage_dtype": storage_dtype}
    for other in STORAGE_DTYPES:
      if other != storage_dtype and os.path.isdir(self.entry_dir(root, key, name, other)):
        log.info("embedding cache: a %s entry of the same embeddings exists at %s; this run uses its own "
                 "%s entry (--cache-dtype %s reuses that one)", other, self.entry_dir(root, key, name, other),
                 storage_dtype, other)
    self.chunk_size = chunk_size
    meta_path = os.path.join(self.dir, "meta.json")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        meta = json.load(f)
      self.chunk_size = int(meta["chunk_size"])  # resume with the chunking already on disk

  @staticmethod
  def entry_dir(root: str, key: Mapping, name: str, storage_dtype: str) -> str:
    key = dict(key) | {"storage_dtype": storage_dtype}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(root, f"{name}-{digest}")

  def chunk_path(self, i: int) -> str:
    return os.path.join(self.dir, f"chunk_{i:05d}.npy")

  def missing_chunks(self, n: int) -> list[int]:
    num = -(-n // self.chunk_size)
    return [i for i in range(num) if not os.path.exists(self.chunk_path(i))]

  def get_or_encode(self, texts: Sequence[str], encode: Callable[[Sequence[str]], np.ndarray],
                    show_progress: bool = True) -> ChunkedEmbeddings:
    n = len(texts)
    os.makedirs(self.dir, exist_ok=True)
    meta_path = os.path.join(self.dir, "meta.json")
    if not os.path.exists(meta_path):
      with paths.atomic_write(meta_path) as f:
        json.dump({"key": self.key, "num_texts": n, "chunk_size": self.chunk_size}, f, indent=1)
    num = -(-n // self.chunk_size)
    todo = self.missing_chunks(n)
    if todo:
      log.info("embedding cache %s: encoding %d of %d chunks (%d texts)", self.dir, len(todo), num, n)
    bar = None
    if show_progress and todo:
      from tqdm import tqdm
      bar = tqdm(total=sum(min(self.chunk_size, n - i * self.chunk_size) for i in todo),
                 desc="encode corpus", unit="doc")
    t0, done = time.time(), 0
    for i in todo:
      chunk = texts[i * self.chunk_size:(i + 1) * self.chunk_size]
      emb = np.asarray(encode(chunk), dtype=np.float32)
      if emb.ndim != 2 or len(emb) != len(chunk):
        raise ValueError(f"encoder returned shape {emb.shape} for {len(chunk)} texts")
      emb = emb.astype(self.storage_dtype)
      with paths.atomic_write(self.chunk_path(i), "wb") as f:
        np.save(f, emb)
      done += len(chunk)
      if bar is not None:
        bar.update(len(chunk))
      else:
        log.info("encoded %d/%d new texts (%.1f docs/s)", done, n, done / max(time.time() - t0, 1e-9))
    if bar is not None:
      bar.close()
    emb = ChunkedEmbeddings([self.chunk_path(i) for i in range(num)])
    for i, chunk in enumerate(emb.chunks):
      if chunk.dtype != self.storage_dtype:  # a chunk copied in by hand, or another version's
        raise ValueError(f"embedding cache {self.chunk_path(i)} holds {chunk.dtype}, but this entry stores "
                         f"{self.storage_dtype}: delete {self.dir} to rebuild it")
    return emb
