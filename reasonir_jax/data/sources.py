"""Training sources: parsing `config.data.sources`, per-process file sharding, the offset index
that gives Grain random access to TFRecord records, and the record counts of every process
(which the mixing plan, mixing.py, is made from).

Why an offset index rather than a sequential TFRecord reader: with the byte offset of every
record known, a record is one seek + read, so Grain can shuffle globally (a fresh permutation of
all local records each epoch) and any record of any epoch is one integer (stream position
epoch * n + k), which makes the iterator state tiny, exact and cheap to restore.

Remote files (gs://...) are staged, not streamed: each process copies its own share of the files
to local disk once (one sequential, buffered download per file; reused after a restart), then
indexes and reads the local copies. A global shuffle reads records in random order, which over
GCS would cost a network round trip per record; streaming would give that shuffle up (and make
the read position depend on buffer state). A process's share is 1/N of the data, which fits
the local disk of a TPU VM.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading

import grain
import numpy as np

from reasonir_jax import paths as paths_lib
from reasonir_jax.data.tfrecord import build_offset_index, read_record_at

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


def shard_files(paths: list[str], process_index: int, process_count: int,
                source: str) -> list[str]:
  """The files this process reads: every process_count-th file, starting at process_index."""
  if len(paths) < process_count:
    raise ValueError(
        f"source {source!r} has {len(paths)} files but there are {process_count} processes; "
        f"files are split between processes, so write at least {process_count} shards")
  return paths[process_index::process_count]


class TFRecordIndexSource(grain.sources.RandomAccessDataSource):
  """Random access to the records of some TFRecord files: item i -> (path, offset, bytes).
  Remote files are first staged to `stage_dir` (default: REASONIR_STAGE_DIR, else a folder in
  the system temporary directory)."""

  def __init__(self, paths: list[str], skip_corrupt: bool = False, stage_dir: str | None = None):
    stage_dir = stage_dir or os.environ.get("REASONIR_STAGE_DIR") or os.path.join(
        tempfile.gettempdir(), "reasonir_stage")
    self.paths = [paths_lib.stage_local(p, stage_dir) for p in paths]
    staged = sum(a != b for a, b in zip(paths, self.paths))
    if staged:
      log.info("staged %d remote files to %s", staged, stage_dir)
    file_ids, offsets, lengths = [], [], []
    self.corrupt_tails = []  # (path, offset, reason) of unreadable file ends (only when skipping)
    for i, path in enumerate(self.paths):
      index = build_offset_index(path, skip_corrupt=skip_corrupt)
      file_ids.extend([i] * len(index.offsets))
      offsets.extend(index.offsets)
      lengths.extend(index.lengths)
      for offset, reason in index.corrupt:
        log.warning("skipping corrupt TFRecord data in %s at byte offset %d: %s (rest of file)",
                    path, offset, reason)
        self.corrupt_tails.append((path, offset, reason))
    self._file_ids = np.asarray(file_ids, np.int32)
    self._offsets = np.asarray(offsets, np.int64)
    self._lengths = np.asarray(lengths, np.int64)
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


def records_per_process(local_counts: list[int], paths: list[list[str]], process_index: int,
                        process_count: int, skip_corrupt: bool = False) -> np.ndarray:
  """counts[p, s]: the records of source s that process p reads (source s's files are
  `paths[s]`; this process's counts are `local_counts`). In a multi-process JAX run the counts
  come from every process's own offset index (one small all-gather at start-up, in program
  order on every process). Processes simulated in one (tests, `process_count` given without a
  JAX cluster of that size) count the other shares' records themselves, from their headers."""
  local = np.asarray(local_counts, np.int64)
  if process_count == 1:
    return local[None, :]
  import jax
  if jax.process_count() == process_count:
    from jax.experimental import multihost_utils
    # int32: what JAX carries without x64.
    counts = np.asarray(multihost_utils.process_allgather(local.astype(np.int32)), np.int64)
    return counts.reshape(process_count, len(local))
  counts = np.zeros((process_count, len(local)), np.int64)
  for p in range(process_count):
    for s, source_paths in enumerate(paths):
      if p == process_index:
        counts[p, s] = local[s]
      else:
        share = source_paths[p::process_count]
        counts[p, s] = sum(len(build_offset_index(f, skip_corrupt=skip_corrupt).offsets)
                           for f in share)
  return counts


def shuffled_records(source: TFRecordIndexSource, seed: int) -> grain.MapDataset:
  """An endless Grain dataset over the records, reshuffled every epoch (deterministic in seed)."""
  if len(source) == 0:
    raise ValueError(f"{source!r}: no records to read")
  return grain.MapDataset.source(source).shuffle(seed=seed).repeat()
