"""TensorBoard event files on an object store (gs://, or any fsspec filesystem), written by
tensorboardX through reasonir_jax.paths and safe to flush from two threads at once.

tensorboardX appends records to one event file and flushes it from its event thread (every
`flush_secs`) and from the caller (`SummaryWriter.flush`, each logged step). An object cannot be
appended to; re-uploading the whole file on every flush, from both threads into one unlocked
writer, is what hung training runs on gs://. Here a writer keeps only the records not yet
uploaded, behind a lock, and uploads them as a new object at the first flush, then at most once
per `upload_secs`, and at close: `events.out.tfevents.T.HOST`, then `...HOST.000001`, ...
TensorBoard reads every `*tfevents*` object of a directory in name order, so the parts of a run
read as one event file. A failed periodic upload keeps its records for the next one (the event
thread must not die: tensorboardX's queue would then fill and block the caller); a failed final
upload at close raises, naming the object.
"""
from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time

from reasonir_jax import paths

log = logging.getLogger(__name__)

# Seconds between uploads: each one is a new object, so this bounds both the objects per run
# (about 1,400 a day) and the scalars a killed run loses (stdout still has them).
UPLOAD_SECS = 60.0
_HEADER_BYTES, _FOOTER_BYTES = 12, 4  # TFRecord: uint64 length, uint32 crc | data | uint32 crc


def complete_records(buffer) -> int:
  """How many leading bytes of `buffer` are whole TFRecords (a part never ends mid-record)."""
  end = 0
  while end + _HEADER_BYTES <= len(buffer):
    (length,) = struct.unpack_from("<Q", buffer, end)
    if end + _HEADER_BYTES + length + _FOOTER_BYTES > len(buffer):
      break
    end += _HEADER_BYTES + length + _FOOTER_BYTES
  return end


def part_name(path: str, part: int) -> str:
  """Object of the `part`-th upload of event file `path` (part 0 keeps tensorboardX's name)."""
  return path if part == 0 else f"{path}.{part:06d}"


class ObjectEventWriter:
  """The file object tensorboardX's RecordWriter writes one event file into."""

  def __init__(self, path: str, upload_secs: float = UPLOAD_SECS):
    self.path = path
    self.upload_secs = upload_secs
    self.parts = 0  # objects uploaded so far
    self.closed = False
    self._pending = bytearray()
    self._last_upload = -math.inf
    self._lock = threading.Lock()

  def write(self, data: bytes) -> None:
    with self._lock:
      if self.closed:
        raise ValueError(f"event file {self.path} is closed")
      self._pending += data

  def flush(self) -> None:
    with self._lock:
      if self.closed or time.monotonic() - self._last_upload < self.upload_secs:
        return
      try:
        self._upload()
      except Exception as e:  # noqa: BLE001 - kept for the next try; see the module docstring
        self._last_upload = time.monotonic()  # not at every step while the store is down
        log.warning("TensorBoard upload to %s failed (%s: %s); retrying in %.0f s",
                    part_name(self.path, self.parts), type(e).__name__, e, self.upload_secs)

  def close(self) -> None:
    with self._lock:
      if self.closed:
        return
      try:
        self._upload()
      except Exception as e:  # noqa: BLE001 - any backend error: name the object
        raise paths.PathError(f"cannot write TensorBoard events to "
                              f"{part_name(self.path, self.parts)!r}: {type(e).__name__}: {e}") from e
      self.closed = True

  def _upload(self) -> None:
    n = complete_records(self._pending)
    if n:
      with paths.open(part_name(self.path, self.parts), "wb") as f:
        f.write(bytes(self._pending[:n]))
      del self._pending[:n]  # only once the object exists
      self.parts += 1
    self._last_upload = time.monotonic()


class _ObjectEventWriterFactory:
  def __init__(self, upload_secs: float):
    self.upload_secs = upload_secs

  def open(self, path: str) -> ObjectEventWriter:
    return ObjectEventWriter(path, self.upload_secs)

  def directory_check(self, path: str) -> None:
    paths.makedirs(path)


def register(logdir, upload_secs: float | None = None) -> None:
  """Makes tensorboardX write event files under a remote `logdir` through reasonir_jax.paths
  (instead of its own google-cloud-storage / boto clients), uploading every `upload_secs`
  (default UPLOAD_SECS); no-op for local paths."""
  if not paths.is_remote(logdir):
    return
  from tensorboardX import record_writer
  record_writer.register_writer_factory(
      os.fspath(logdir).split("://", 1)[0],
      _ObjectEventWriterFactory(UPLOAD_SECS if upload_secs is None else upload_secs))
