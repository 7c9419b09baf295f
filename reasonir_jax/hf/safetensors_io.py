"""Reading and writing safetensors files one tensor (or one block of one) at a time, bf16
included, without torch, on local disk or any remote filesystem of `reasonir_jax.paths` (gs://, ...).

The format is an 8-byte little-endian header size, a JSON header (name -> dtype, shape,
data_offsets), then raw little-endian bytes. Opening reads the header only. `read_block` reads one
block of a tensor seen in a C-contiguous view shape: a local file is memory-mapped, so only the
block's pages are touched; a remote one reads the byte range of the block's leading-axis rows.
A checkpoint is never held in host memory as a whole; writing streams tensors in order.
"""
from __future__ import annotations

import json
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from reasonir_jax import paths

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy reader: `names()`, `shape(name)`, `dtype(name)`, `get(name)`, `read_block(...)`."""

  def __init__(self, path: str):
    self.path = str(path)
    with paths.open(self.path) as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
      (n,) = struct.unpack("<Q", raw)
      try:
        header = json.loads(f.read(n))
      except ValueError as e:
        raise ValueError(f"{path}: corrupt safetensors header: {e}") from None
    self.metadata = header.pop("__metadata__", None) or {}
    self._header = header
    self._data_start = 8 + n

  def names(self) -> list[str]:
    return list(self._header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._header[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    code = self._header[name]["dtype"]
    if code not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
    return _DTYPES[code]

  def _range(self, name: str) -> tuple[int, int]:
    if name not in self._header:
      raise KeyError(f"{self.path}: no tensor {name!r}")
    start, end = self._header[name]["data_offsets"]
    shape, dtype = self.shape(name), self.dtype(name)
    if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
      raise ValueError(f"{self.path}: tensor {name!r} byte range does not match shape {shape}")
    return start, end

  def get(self, name: str) -> np.ndarray:
    """The whole tensor (memory-mapped when local)."""
    return self.read_block(name, self.shape(name), ())

  def read_block(self, name: str, view: tuple[int, ...], index: tuple) -> np.ndarray:
    """`tensor.reshape(view)[index]` as an array, reading about that block only. `index` holds
    one slice per leading axis (missing axes are whole)."""
    start, end = self._range(name)
    dtype = self.dtype(name)
    view = tuple(view)
    index = tuple(index) + (slice(None),) * (len(view) - len(index))
    if end == start:
      return np.zeros(view, dtype)[index]
    if not paths.is_remote(self.path):
      mapped = np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + start,
                         shape=view)
      return np.array(mapped[index])  # copies only the block's pages out of the page cache
    # Remote: fetch the contiguous bytes of the block's rows along the leading view axis.
    rows = range(view[0])[index[0]] if view else range(1)
    lo, hi = (rows.start, rows.stop) if rows.step == 1 and len(rows) else (0, view[0])
    row_bytes = int(np.prod(view[1:], dtype=np.int64)) * dtype.itemsize
    with paths.open(self.path) as f:
      f.seek(self._data_start + start + lo * row_bytes)
      raw = f.read((hi - lo) * row_bytes)
    block = np.frombuffer(raw, dtype=dtype).reshape((hi - lo,) + view[1:])
    first = slice(rows.start - lo, rows.stop - lo, rows.step) if len(rows) else slice(0, 0)
    return np.array(block[(first,) + index[1:]])


def write_safetensors(path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                      fetch: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes the tensors `specs` (name, shape, dtype), calling `fetch(name)` for one at a time."""
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, shape, dtype in specs:
    dtype = np.dtype(dtype)
    if dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns the data start to 8 bytes
  # Readers see the file whole or not at all.
  with paths.atomic_write(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in specs:
      arr = np.ascontiguousarray(fetch(name))
      if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ValueError(f"tensor {name!r}: got {arr.shape} {arr.dtype}, planned {shape} {dtype}")
      f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def tensor_bytes(shape: Iterable[int], dtype) -> int:
  return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize
