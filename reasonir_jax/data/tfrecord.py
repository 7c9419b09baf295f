"""TFRecord framing without TensorFlow: writing records, an offset index, and checked reads.

A TFRecord file is a sequence of records, each framed as
  uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32). This is the format
TensorFlow's `tf.data.TFRecordDataset` reads (uncompressed).

Every read checks both CRCs; a bad record raises `CorruptRecordError` naming the file and the
byte offset of the record, unless the caller asked to skip corrupt records (then it is counted
and logged, never dropped silently). Paths may be remote (reasonir_jax.paths): reads are
buffered in large blocks, so scanning the headers of a file costs one request per block.
"""
from __future__ import annotations

import dataclasses
import logging
import struct
from typing import BinaryIO, Iterator

import crc32c as _crc32c

from reasonir_jax import paths

log = logging.getLogger(__name__)

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
HEADER_SIZE = _HEADER.size  # 12
FOOTER_SIZE = _FOOTER.size  # 4
# A length beyond this is taken as a corrupt header rather than an allocation request.
MAX_RECORD_BYTES = 1 << 31


class CorruptRecordError(ValueError):
  """A record that fails its framing checks; carries the file path and the record's byte offset."""

  def __init__(self, path: str, offset: int, reason: str):
    super().__init__(f"corrupt TFRecord in {path} at byte offset {offset}: {reason}")
    self.path = path
    self.offset = offset
    self.reason = reason


def crc32c(data: bytes) -> int:
  return _crc32c.crc32c(data) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """The full on-disk bytes of one record."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_record(f: BinaryIO, data: bytes) -> int:
  """Appends one framed record; returns the number of bytes written."""
  framed = frame_record(data)
  f.write(framed)
  return len(framed)


@dataclasses.dataclass
class IndexResult:
  """Offsets (of the record header) and data lengths of the good records of one file."""
  offsets: list[int]
  lengths: list[int]
  # (offset, reason) of each corrupt header found (only when skipping); the scan stops there
  # because a bad length makes the rest of the file unframeable.
  corrupt: list[tuple[int, str]]


def build_offset_index(path: str, skip_corrupt: bool = False) -> IndexResult:
  """Scans the record headers of a file (checking the length CRC), without reading the data.

  A truncated final record or a bad length CRC raises `CorruptRecordError`; with skip_corrupt
  the scan stops there, and the failure is returned in `corrupt` for the caller to count.
  """
  offsets, lengths, corrupt = [], [], []
  size = paths.getsize(path)
  with paths.open(path, "rb") as f:
    pos = 0
    while pos < size:
      header = f.read(HEADER_SIZE)
      reason = None
      if len(header) < HEADER_SIZE:
        reason = f"truncated header ({len(header)} of {HEADER_SIZE} bytes)"
      else:
        length, length_crc = _HEADER.unpack(header)
        if length_crc != masked_crc32c(header[:8]):
          reason = "length CRC mismatch"
        elif length > MAX_RECORD_BYTES:
          reason = f"implausible record length {length}"
        elif pos + HEADER_SIZE + length + FOOTER_SIZE > size:
          reason = (f"truncated record (needs {HEADER_SIZE + length + FOOTER_SIZE} bytes, "
                    f"{size - pos} left in file)")
      if reason is not None:
        if not skip_corrupt:
          raise CorruptRecordError(path, pos, reason)
        corrupt.append((pos, reason))
        break
      offsets.append(pos)
      lengths.append(length)
      pos += HEADER_SIZE + length + FOOTER_SIZE
      f.seek(pos)
  return IndexResult(offsets, lengths, corrupt)


def read_record_at(f: BinaryIO, path: str, offset: int, length: int) -> bytes:
  """Reads the record at `offset` (from the index) and checks its data CRC."""
  f.seek(offset + HEADER_SIZE)
  blob = f.read(length + FOOTER_SIZE)
  if len(blob) < length + FOOTER_SIZE:
    raise CorruptRecordError(path, offset, "truncated record data")
  data = blob[:length]
  (data_crc,) = _FOOTER.unpack(blob[length:])
  if data_crc != masked_crc32c(data):
    raise CorruptRecordError(path, offset, "data CRC mismatch")
  return data


def iter_records(path: str, skip_corrupt: bool = False,
                 on_skip=None) -> Iterator[tuple[int, bytes]]:
  """Yields (offset, data) of each record in file order, checking both CRCs.

  With skip_corrupt, a record whose data CRC fails is skipped and `on_skip(path, offset, reason)`
  is called (the default logs a warning); a bad header ends the file (see build_offset_index).
  """
  index = build_offset_index(path, skip_corrupt=skip_corrupt)
  with paths.open(path, "rb") as f:
    for offset, length in zip(index.offsets, index.lengths):
      try:
        yield offset, read_record_at(f, path, offset, length)
      except CorruptRecordError as e:
        if not skip_corrupt:
          raise
        _report_skip(on_skip, path, offset, e.reason)
  for offset, reason in index.corrupt:
    _report_skip(on_skip, path, offset, reason)


def _report_skip(on_skip, path, offset, reason):
  if on_skip is not None:
    on_skip(path, offset, reason)
  else:
    log.warning("skipped corrupt TFRecord in %s at byte offset %d: %s", path, offset, reason)
