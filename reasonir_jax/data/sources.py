"""Training sources: parsing `config.data.sources`, per-process record shares, the offset index
that gives Grain random access to TFRecord records, and each share as a Grain dataset.

Sharding is by record, not by file. A source's records, numbered in file order, are cut into
`process_count` equal contiguous shares of floor(n / P) records; process p reads records
p*m .. p*m+m-1 (a Grain slice of the source's record index), whatever the number of files (one
file on 16 processes works). Equal shares make every host cycle its records at the same rate,
so every record of a source is drawn at the same rate whichever host holds it; the n mod P
(< P) records after the last share are left out and logged. Contiguous shares keep each
process's share in as few files as possible.

Why an offset index rather than a sequential TFRecord reader: with the byte offset of every
record known, a record is one seek + read, so Grain can shuffle globally (a fresh permutation of
a share's records each epoch) and any record of any epoch is one integer (stream position
epoch * m + k), which makes the iterator state tiny, exact and cheap to restore.

The shares need every file's record count. Each process indexes (and, if remote, stages) one
contiguous block of the files, and one all-gather at start-up gives every process all counts;
then each process indexes the files that hold its share. Processes simulated in one (tests,
`process_count` given without a JAX cluster of that size) index every file themselves.

Remote files (gs://...) are staged, not streamed: a process copies to local disk only the files
of its index block and the files that hold its share (one sequential, buffered download per
file; reused after a restart), then indexes and reads the local copies. A global shuffle reads
records in random order, which over GCS would cost a network round trip per record; streaming
would give that shuffle up (and make the read position depend on buffer state). Contiguous
shares and contiguous index blocks line up when files are of similar size, so a process stages
about 1/P of the data plus at most the two files its share's ends fall into, which fits the
local disk of a TPU VM; staging every file on every host would multiply the download by P.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import uuid

import grain
import numpy as np

from reasonir_jax import paths as paths_lib
from reasonir_jax.data.tfrecord import IndexResult, build_offset_index, read_record_at

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  name: str
  pattern: str
  weight: float


def parse_sources(spec: str) -> list[SourceSpec]:
  """Parses "name=glob[:weight],..." ("sample" alone = the shipped sample set). A missing
  weight is 1. Weights are relative (normalised later)."""
  if not spec or not spec.strip():
    raise ValueError("config.data.sources is empty; expected 'name=glob[:weight],...' or 'sample'")
  out = []
  for item in spec.split(","):
    item = item.strip()
    if not item:
      continue
    if item == "sample":
      out.append(SourceSpec("sample", "sample", 1.0))
      continue
    if "=" not in item:
      raise ValueError(f"config.data.sources entry {item!r} is not of the form name=glob[:weight]")
    name, rest = item.split("=", 1)
    weight = 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
      try:
        weight = float(tail)
        rest = head
      except ValueError:
        pass  # a colon inside the path (e.g. gs://), not a weight
    if not name or not rest:
      raise ValueError(f"config.data.sources entry {item!r}: empty name or glob")
    if weight <= 0:
      raise ValueError(f"config.data.sources entry {item!r}: weight must be > 0")
    out.append(SourceSpec(name.strip(), rest.strip(), weight))
  names = [s.name for s in out]
  if len(set(names)) != len(names):
    raise ValueError(f"config.data.sources has duplicate names: {names}")
  return out


# ---- record shares (pure arithmetic: plans for any process count, without processes) ------------
def record_share(total: int, process_index: int, process_count: int, source: str) -> range:
  """The global record numbers process `process_index` reads: an equal contiguous share."""
  per = total // process_count
  if per == 0:
    raise ValueError(
        f"source {source!r} has {total} records but there are {process_count} processes: each "
        f"process reads an equal share of every source's records, so a source needs at least "
        f"{process_count} records (add records, or leave the source out)")
  return range(process_index * per, (process_index + 1) * per)


def file_pieces(file_counts: list[int], share: range) -> list[tuple[int, int, int]]:
  """(file number, first record, end record) within each file that holds part of `share`."""
  out, start = [], 0
  for i, n in enumerate(file_counts):
    lo, hi = max(share.start, start), min(share.stop, start + int(n))
    if lo < hi:
      out.append((i, lo - start, hi - start))
    start += int(n)
  return out


def index_block(num_files: int, process_index: int, process_count: int) -> range:
  """The files a process indexes for the start-up count (contiguous, like the shares)."""
  return range(process_index * num_files // process_count,
               (process_index + 1) * num_files // process_count)


# ---- indexing and staging ----------------------------------------------------------------------
class FileIndexer:
  """Stages (if remote) and indexes files, each once per process. A file's offset index is
  built once and kept beside the staged copies (`<stage_dir>/index/`, keyed by the file's path,
  size and modification time), so a restart reads it back instead of scanning every header
  again. Only clean indexes are kept: a file with a corrupt tail is scanned each time, so the
  skip is logged and counted again."""

  def __init__(self, skip_corrupt: bool = False, stage_dir: str | None = None):
    self.skip_corrupt = skip_corrupt
    self.stage_dir = stage_dir or os.environ.get("REASONIR_STAGE_DIR") or os.path.join(
        tempfile.gettempdir(), "reasonir_stage")
    self._done: dict[str, tuple[str, IndexResult]] = {}

  @property
  def indexed(self) -> list[str]:
    """The files indexed so far (remote ones were staged), in order."""
    return list(self._done)

  def __call__(self, path: str) -> tuple[str, IndexResult]:
    """(local path, offset index) of `path`."""
    if path not in self._done:
      local = paths_lib.stage_local(path, self.stage_dir)
      if local != path:
        log.info("staged %s to %s", path, local)
      index = self._index(path, local)
      for offset, reason in index.corrupt:
        log.warning("skipping corrupt TFRecord data in %s at byte offset %d: %s (rest of file)",
                    local, offset, reason)
      self._done[path] = (local, index)
    return self._done[path]

  def _index_file(self, path: str, local: str) -> str:
    st = os.stat(local)
    key = hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join(self.stage_dir, "index", f"{key}-{os.path.basename(local)}.npz")

  def _index(self, path: str, local: str) -> IndexResult:
    cached = self._index_file(path, local)
    if os.path.isfile(cached):
      with np.load(cached) as z:
        return IndexResult(z["offsets"].tolist(), z["lengths"].tolist(), [])
    index = build_offset_index(local, skip_corrupt=self.skip_corrupt)
    if not index.corrupt:
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      # A unique temporary name, then an atomic rename: processes on one host may index the
      # same file at once.
      tmp = f"{cached}.tmp-{uuid.uuid4().hex[:8]}.npz"
      np.savez(tmp, offsets=np.asarray(index.offsets, np.int64),
               lengths=np.asarray(index.lengths, np.int64))
      os.replace(tmp, cached)
    return index


def file_record_counts(paths: list[str], indexer: FileIndexer, process_index: int,
                       process_count: int) -> np.ndarray:
  """The record count of every file. In a multi-process JAX run each process indexes its block
  and one all-gather (in program order on every process) shares the counts."""
  import jax
  distributed = process_count > 1 and jax.process_count() == process_count
  mine = index_block(len(paths), process_index, process_count) if distributed else range(len(paths))
  local = np.zeros(len(paths), np.int64)
  for i in mine:
    local[i] = len(indexer(paths[i])[1].offsets)
  if not distributed:
    return local
  from jax.experimental import multihost_utils
  # int32: what JAX carries without x64; each file is counted by exactly one process.
  gathered = multihost_utils.process_allgather(local.astype(np.int32))
  return np.asarray(gathered, np.int64).reshape(process_count, len(paths)).sum(axis=0)


class TFRecordIndexSource(grain.sources.RandomAccessDataSource):
  """Random access to the records of indexed local TFRecord files: item i -> (path, offset,
  bytes). `files` are (local path, offset index) pairs, e.g. from `FileIndexer`."""

  def __init__(self, files: list[tuple[str, IndexResult]]):
    self.paths = [path for path, _ in files]
    self._file_ids = np.concatenate(
        [np.full(len(index.offsets), i, np.int32) for i, (_, index) in enumerate(files)]
        or [np.zeros(0, np.int32)])
    self._offsets = np.concatenate([np.asarray(index.offsets, np.int64) for _, index in files]
                                   or [np.zeros(0, np.int64)])
    self._lengths = np.concatenate([np.asarray(index.lengths, np.int64) for _, index in files]
                                   or [np.zeros(0, np.int64)])
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self._offsets)

  def _handle(self, file_id: int):
    handles = getattr(self._local, "handles", None)
    if handles is None:
      handles = self._local.handles = {}
    if file_id not in handles:
      handles[file_id] = open(self.paths[file_id], "rb")
    return handles[file_id]

  def __getitem__(self, i: int) -> tuple[str, int, bytes]:
    file_id = int(self._file_ids[i])
    path, offset = self.paths[file_id], int(self._offsets[i])
    return path, offset, read_record_at(self._handle(file_id), path, offset, int(self._lengths[i]))

  def __repr__(self) -> str:
    return f"TFRecordIndexSource({len(self.paths)} files, {len(self)} records)"


@dataclasses.dataclass
class SourceShare:
  """One source as one process reads it: `records` is a Grain dataset of its share (item k ->
  (path, offset, bytes)); `skipped_corrupt` the corrupt file tails this process counts (those
  of its index block, so each is counted once over all processes)."""
  name: str
  total: int
  share: range
  num_files: int
  files_read: int
  records: grain.MapDataset
  skipped_corrupt: int

  def __len__(self) -> int:
    return len(self.share)


def open_share(name: str, paths: list[str], indexer: FileIndexer, process_index: int,
               process_count: int) -> SourceShare:
  """This process's share of a source's files `paths` (see the module docstring)."""
  counts = file_record_counts(paths, indexer, process_index, process_count)
  total = int(counts.sum())
  share = record_share(total, process_index, process_count, name)
  pieces = file_pieces(counts.tolist(), share)
  source = TFRecordIndexSource([indexer(paths[i]) for i, _, _ in pieces])
  first = pieces[0][1]
  # Grain's slice: the share within the records of the files that hold it.
  records = grain.MapDataset.source(source)[first:first + len(share)]
  left_out = total - process_count * len(share)
  if left_out and process_index == 0:
    log.info("source %s: %d records in %d equal shares of %d; the last %d records are left out",
             name, total, process_count, len(share), left_out)
  corrupt = sum(len(indexer(paths[i])[1].corrupt)
                for i in index_block(len(paths), process_index, process_count))
  return SourceShare(name, total, share, len(paths), len(pieces), records, corrupt)


def shuffled_records(records: grain.MapDataset, seed: int) -> grain.MapDataset:
  """An endless Grain dataset over the records, reshuffled every epoch (deterministic in seed)."""
  return records.shuffle(seed=seed).repeat()
