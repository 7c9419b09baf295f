"""Writing training rows as sharded TFRecord files (`name-00000-of-00008.tfrecord`).

Public API (used by the converters and `data_gen`):
  write_rows(rows, output_dir, name, num_shards) -> final paths
  ShardWriter(path): context manager; `.write(row)`; the file appears under its final name only
    when closed without an error (written as `<path>.tmp-<pid>` and renamed), so a crash never
    leaves a half file with a final name.
  row_to_example_bytes(row) / example_bytes_to_row(bytes)
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

from reasonir_jax.data.example_codec import example_bytes_to_row, row_to_example_bytes
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.tfrecord import write_record

__all__ = ["ShardWriter", "write_rows", "shard_path", "row_to_example_bytes",
           "example_bytes_to_row"]

log = logging.getLogger(__name__)


def shard_path(output_dir: str, name: str, index: int, num_shards: int) -> str:
  return os.path.join(output_dir, f"{name}-{index:05d}-of-{num_shards:05d}.tfrecord")


class ShardWriter:
  """Writes rows to one TFRecord file, atomically: temp file, fsync, rename on a clean close."""

  def __init__(self, path: str):
    self.path = path
    self.tmp_path = f"{path}.tmp-{os.getpid()}"
    self.num_rows = 0
    self.num_bytes = 0
    self._f = None

  def __enter__(self) -> "ShardWriter":
    self.open()
    return self

  def open(self) -> None:
    if self._f is None:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      self._f = open(self.tmp_path, "wb")

  def write(self, row: TrainingRow) -> None:
    if self._f is None:
      self.open()
    self.num_bytes += write_record(self._f, row_to_example_bytes(row))
    self.num_rows += 1

  def close(self) -> str:
    """Flushes and renames the file to its final name; returns the final path."""
    if self._f is None:
      self.open()  # an empty shard is still a valid (empty) file
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    self._f = None
    os.replace(self.tmp_path, self.path)
    return self.path

  def abort(self) -> None:
    """Drops the partial file (the final name is never created)."""
    if self._f is not None:
      self._f.close()
      self._f = None
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_rows(rows: Iterable[TrainingRow], output_dir: str, name: str,
               num_shards: int) -> list[str]:
  """Writes rows round-robin over `num_shards` files; returns the final paths (all shards, even
  empty ones, so `name-*-of-N` is always complete). Nothing gets a final name unless every shard
  was written successfully."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if not name or "/" in name:
    raise ValueError(f"name must be a plain file name prefix, got {name!r}")
  writers = [ShardWriter(shard_path(output_dir, name, i, num_shards)) for i in range(num_shards)]
  try:
    for w in writers:
      w.open()
    for i, row in enumerate(rows):
      writers[i % num_shards].write(row)
  except BaseException:
    for w in writers:
      w.abort()
    raise
  paths = [w.close() for w in writers]
  log.info("wrote %d rows to %d shards %s", sum(w.num_rows for w in writers), num_shards,
           shard_path(output_dir, name, 0, num_shards).replace("-00000-", "-*-"))
  return paths
