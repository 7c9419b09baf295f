"""Packing several texts into each row of a fixed [rows, L] token budget (no padding FLOPs).

A packed row holds texts back to back. Each token carries a `segment_ids` entry (1, 2, ... for
the texts of its row, 0 for padding at the row's end), a `positions` entry that restarts at 0
for every text, and a `pool_ids` entry: the index of its text in the batch for the tokens that
are mean-pooled, -1 for the template prefix and padding. Attention stays within a segment, so a
packed text is encoded exactly as if it were alone (reasonir_jax.model.pooling.segment_mean_pool
pools per text).

The packer is best-fit decreasing: texts longest first, each into the open row with the least
room that still holds it (a sorted list of free capacities, O(n log n) searches).
"""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def pack_lengths(lengths: Sequence[int], row_length: int,
                 num_rows: int | None = None) -> list[list[int]] | None:
  """Rows of text indices (best-fit decreasing). With num_rows fixed, None when they do not fit;
  otherwise as many rows as needed. Every length must be <= row_length."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
  if num_rows is not None:
    rows = [[] for _ in range(num_rows)]
    free = [(row_length, r) for r in range(num_rows)]
  for i in order:
    n = int(lengths[i])
    if n > row_length:
      raise ValueError(f"text {i} has {n} tokens, more than the row length {row_length}")
    j = bisect.bisect_left(free, (n, -1))
    if j == len(free):
      if num_rows is not None:
        return None
      rows.append([])
      room, r = row_length, len(rows) - 1
    else:
      room, r = free.pop(j)
    rows[r].append(i)
    if room - n > 0:
      bisect.insort(free, (room - n, r))
  return rows


def fit_to_rows(lengths: Sequence[int], row_length: int, num_rows: int,
                min_lengths: Sequence[int] | None = None) -> tuple[list[list[int]], int | None]:
  """(rows, cap): packs into exactly num_rows rows. When the texts do not fit, the longest are
  cut to the largest length `cap` with which they do (binary search), never below their
  min_lengths (e.g. the template prefix + 1 text token); cap is None when nothing was cut.
  Raises if the texts do not fit even at their minimum lengths."""
  mins = [1] * len(lengths) if min_lengths is None else [max(1, int(m)) for m in min_lengths]

  def attempt(cap):
    cut = [min(n, max(cap, m)) for n, m in zip(lengths, mins)]
    if max(cut, default=0) > row_length:
      return None
    return pack_lengths(cut, row_length, num_rows)

  longest = max(lengths, default=0)
  rows = attempt(longest)
  if rows is not None:
    return rows, None
  if attempt(0) is None:
    raise ValueError(f"{len(lengths)} texts of at least {sum(mins)} tokens in all cannot fit "
                     f"{num_rows} rows of {row_length} tokens")
  lo, hi = 0, longest  # lo always fits, hi never does
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if attempt(mid) is None:
      hi = mid
    else:
      lo = mid
  return attempt(lo), lo


def cut_lengths(lengths: Sequence[int], cap: int | None,
                min_lengths: Sequence[int] | None = None) -> list[int]:
  """The lengths `fit_to_rows` packed for a cap."""
  if cap is None:
    return list(lengths)
  mins = [1] * len(lengths) if min_lengths is None else [max(1, int(m)) for m in min_lengths]
  return [min(n, max(cap, m)) for n, m in zip(lengths, mins)]


def packed_arrays(encoded: Sequence[tuple[Sequence[int], int]], rows: Sequence[Sequence[int]],
                  row_length: int, pad_id: int, text_offset: int = 0,
                  lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """int32 [len(rows), row_length] input_ids, segment_ids, positions and pool_ids for texts
  (ids, prefix_len) laid out as `rows` says. Text i gets pool id text_offset + i; with
  `lengths` (from `cut_lengths`) text i keeps its first lengths[i] tokens."""
  shape = (len(rows), row_length)
  input_ids = np.full(shape, pad_id, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  positions = np.zeros(shape, np.int32)
  pool_ids = np.full(shape, -1, np.int32)
  for r, members in enumerate(rows):
    start = 0
    for seg, i in enumerate(members, start=1):
      ids, prefix_len = encoded[i]
      n = len(ids) if lengths is None else min(len(ids), int(lengths[i]))
      end = start + n
      if end > row_length:
        raise ValueError(f"row {r} holds more than {row_length} tokens")
      input_ids[r, start:end] = ids[:n]
      segment_ids[r, start:end] = seg
      positions[r, start:end] = np.arange(n)
      pool_ids[r, start + min(prefix_len, n):end] = text_offset + i
      start = end
  return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions,
          "pool_ids": pool_ids}


PER_ROW_FIELDS = {"query": "pack_queries_per_row", "passage": "pack_passages_per_row"}


def packed_rows_per_side(config, num_queries: int) -> dict[str, int]:
  """Packed rows of a batch of num_queries queries (reasonir_jax.data.layout.BatchLayout, which
  the trainer and the input pipeline share)."""
  from reasonir_jax.data.layout import BatchLayout  # pylint: disable=import-outside-toplevel
  return BatchLayout.from_config(config).packed_rows_for(num_queries)


def pack_padded(side: dict[str, np.ndarray], num_rows: int, row_length: int,
                pad_id: int = 2) -> dict[str, np.ndarray]:
  """The texts of padded rows (input_ids, attention_mask, pool_mask; the pooled tokens one run
  after the prefix) packed into num_rows rows: the same batch without padding (tests, bench)."""
  encoded = []
  for ids, mask, pool in zip(side["input_ids"], side["attention_mask"], side["pool_mask"]):
    n = int(mask.sum())
    pooled = np.flatnonzero(pool[:n])
    encoded.append((ids[:n].tolist(), int(pooled[0]) if len(pooled) else n))
  rows, cap = fit_to_rows([len(e[0]) for e in encoded], row_length, num_rows)
  if cap is not None:
    raise ValueError(f"the texts do not fit {num_rows} rows of {row_length} tokens")
  return packed_arrays(encoded, rows, row_length, pad_id)
