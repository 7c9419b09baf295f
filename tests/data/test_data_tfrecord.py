"""TFRecord framing: CRC test vectors, byte-level layout checked by an independent reader,
and errors (file + byte offset) or counted skips for corrupt and truncated files."""
import os
import struct

import pytest

from reasonir_jax.data import tfrecord
from reasonir_jax.data.reader import read_rows
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.writer import ShardWriter


def _py_crc32c(data: bytes) -> int:
  """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), independent of `crc32c`."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _py_mask(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _independent_read(path):
  """A from-the-spec TFRecord reader: uint64 len, masked crc(len), data, masked crc(data)."""
  out = []
  with open(path, "rb") as f:
    blob = f.read()
  pos = 0
  while pos < len(blob):
    (length,) = struct.unpack_from("<Q", blob, pos)
    (len_crc,) = struct.unpack_from("<I", blob, pos + 8)
    assert len_crc == _py_mask(_py_crc32c(blob[pos:pos + 8]))
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack_from("<I", blob, pos + 12 + length)
    assert data_crc == _py_mask(_py_crc32c(data))
    out.append(data)
    pos += 12 + length + 4
  assert pos == len(blob)
  return out


def _row(i, **kw):
  return TrainingRow(row_id=f"r{i}", source="s", query=f"query {i}", positives=[f"pos {i}"],
                     negatives=[f"neg {i}"], **kw)


def test_crc32c_known_vectors():
  # RFC 3720 (iSCSI) test vectors for CRC-32C.
  assert tfrecord.crc32c(b"123456789") == 0xE3069283
  assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
  assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
  assert _py_crc32c(b"123456789") == 0xE3069283
  for data in (b"", b"a", b"hello tfrecord", bytes(range(256))):
    assert tfrecord.masked_crc32c(data) == _py_mask(_py_crc32c(data))


def test_frame_layout_byte_for_byte():
  data = b"\x00abc\xffdef"
  framed = tfrecord.frame_record(data)
  expected = (struct.pack("<Q", len(data)) +
              struct.pack("<I", _py_mask(_py_crc32c(struct.pack("<Q", len(data))))) +
              data + struct.pack("<I", _py_mask(_py_crc32c(data))))
  assert framed == expected
  assert len(tfrecord.frame_record(b"")) == 16


def test_written_file_reads_with_independent_reader(tmp_path):
  path = str(tmp_path / "x.tfrecord")
  rows = [_row(i) for i in range(5)]
  with ShardWriter(path) as w:
    for r in rows:
      w.write(r)
  from reasonir_jax.data.writer import row_to_example_bytes
  assert _independent_read(path) == [row_to_example_bytes(r) for r in rows]


def _write(path, n=4):
  with ShardWriter(path) as w:
    for i in range(n):
      w.write(_row(i))
  return tfrecord.build_offset_index(path)


def test_bad_data_crc_names_file_and_offset(tmp_path):
  path = str(tmp_path / "bad.tfrecord")
  index = _write(path)
  off = index.offsets[2]
  with open(path, "r+b") as f:  # flip one byte inside record 2's data
    f.seek(off + 12 + 3)
    b = f.read(1)
    f.seek(off + 12 + 3)
    f.write(bytes([b[0] ^ 0xFF]))
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    list(read_rows(path))
  assert path in str(e.value) and f"byte offset {off}" in str(e.value)
  assert e.value.offset == off
  stats = {}
  rows = list(read_rows(path, skip_corrupt=True, stats=stats))
  assert [r.row_id for r in rows] == ["r0", "r1", "r3"]
  assert stats == {"skipped_corrupt": 1, "rows_read": 3}


def test_truncated_file_names_offset(tmp_path):
  path = str(tmp_path / "trunc.tfrecord")
  index = _write(path)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 5)
  with pytest.raises(tfrecord.CorruptRecordError, match=f"byte offset {index.offsets[3]}.*truncated"):
    list(read_rows(path))
  stats = {}
  assert len(list(read_rows(path, skip_corrupt=True, stats=stats))) == 3
  assert stats["skipped_corrupt"] == 1


def test_bad_length_crc_and_unparsable_example(tmp_path):
  path = str(tmp_path / "len.tfrecord")
  index = _write(path, n=2)
  with open(path, "r+b") as f:
    f.seek(index.offsets[1] + 8)
    f.write(b"\0\0\0\0")
  with pytest.raises(tfrecord.CorruptRecordError, match="length CRC"):
    list(read_rows(path))
  # A correctly framed record whose payload is not a training-row Example.
  junk = str(tmp_path / "junk.tfrecord")
  with open(junk, "wb") as f:
    tfrecord.write_record(f, b"\x0a\x05not an example")
  with pytest.raises(tfrecord.CorruptRecordError, match=r"junk.tfrecord at byte offset 0"):
    list(read_rows(junk))
