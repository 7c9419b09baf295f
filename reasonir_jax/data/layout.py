"""The layout of a training batch, derived once from the config at start-up and handed to both the
train step and the input pipeline: texts per side, packed rows per side, the row lengths a batch
can have (the buckets, or the one packing budget) and the divisibility they need.

  layout = BatchLayout.from_config(config)
  layout.step_shapes                 # [(query_len, passage_len), ...] the step is compiled for
  layout.packed_rows_for(local_b)    # packed rows per side of one process's share
  layout.check_mesh(data_shards, grad_cache_chunk)   # the Trainer's divisibility checks
"""
from __future__ import annotations

import dataclasses

from reasonir_jax.packing import PER_ROW_FIELDS
SIDES = ("query", "passage")


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  global_batch: int  # queries per global batch (train.global_batch_size)
  group_size: int  # passages per query: 1 positive + hard negatives
  query_max_length: int
  passage_max_length: int
  buckets: tuple[int, ...]  # padded row lengths (data.bucket_lengths), each side capped at its max
  packing: bool
  per_row: tuple[int, int]  # packed texts per row: (queries, passages)

  @classmethod
  def from_config(cls, config) -> "BatchLayout":
    d = config.data
    return cls(
        global_batch=int(config.train.global_batch_size),
        group_size=int(d.group_size),
        # A side without its own max length uses data.max_length (as the input pipeline does).
        query_max_length=int(d.get("query_max_length", 0) or d.max_length),
        passage_max_length=int(d.get("passage_max_length", 0) or d.max_length),
        buckets=tuple(int(b) for b in d.bucket_lengths),
        packing=bool(d.get("packing", False)),
        per_row=tuple(int(d.get(PER_ROW_FIELDS[side], 1)) for side in SIDES))

  def num_texts_for(self, num_queries: int) -> dict[str, int]:
    return {"query": num_queries, "passage": num_queries * self.group_size}

  @property
  def num_texts(self) -> dict[str, int]:
    """Texts per side of a global batch."""
    return self.num_texts_for(self.global_batch)

  def packed_rows_for(self, num_queries: int) -> dict[str, int]:
    """Packed rows of a batch of num_queries queries and num_queries x group_size passages:
    texts / data.pack_{query,passage}s_per_row (rows of query_/passage_max_length)."""
    texts = self.num_texts_for(num_queries)
    out = {}
    for side, per_row in zip(SIDES, self.per_row):
      if per_row < 1 or texts[side] % per_row:
        raise ValueError(f"config.data.{PER_ROW_FIELDS[side]}={per_row} must be >= 1 and "
                         f"divide the {texts[side]} {side} texts of the batch")
      out[side] = texts[side] // per_row
    return out

  @property
  def packed_rows(self) -> dict[str, int] | None:
    """Packed rows per side of a global batch; None without packing."""
    return self.packed_rows_for(self.global_batch) if self.packing else None

  @property
  def step_shapes(self) -> list[tuple[int, int]]:
    """Every (query, passage) row length a batch can have: the packed budget's one, or each
    padded bucket up to the max lengths (a batch pads each side to its longest text's bucket)."""
    q_max, p_max = self.query_max_length, self.passage_max_length
    if self.packing:
      return [(q_max, p_max)]
    buckets = sorted(self.buckets)
    queries = [b for b in buckets if b < q_max] + [q_max]
    passages = [b for b in buckets if b < p_max] + [p_max]
    return [(q, p) for q in queries for p in passages]

  def local_batch(self, process_count: int) -> int:
    """Queries of one process's share of a global batch."""
    if self.global_batch % process_count:
      raise ValueError(f"train.global_batch_size {self.global_batch} is not divisible by the "
                       f"{process_count} processes")
    return self.global_batch // process_count

  def check_mesh(self, num_data_shards: int, grad_cache_chunk: int = 0,
                 mesh_shape: dict | None = None) -> None:
    """The global batch, GradCache's chunks and with packing each side's rows split evenly over
    the data-parallel devices (each chunk's rows too)."""
    if self.global_batch % num_data_shards:
      raise ValueError(f"config.train.global_batch_size={self.global_batch} must be a multiple of the "
                       f"{num_data_shards} data-parallel devices of mesh {mesh_shape}")
    if grad_cache_chunk:
      from reasonir_jax.training import grad_cache  # pylint: disable=import-outside-toplevel
      grad_cache.check_chunking(self.global_batch, grad_cache_chunk, num_data_shards, "query")
    if not self.packing:
      return
    texts = self.num_texts
    for side, rows in self.packed_rows.items():
      multiple = num_data_shards * (texts[side] // grad_cache_chunk if grad_cache_chunk else 1)
      if rows % multiple:
        raise ValueError(
            f"packed {side} rows ({rows} = {texts[side]} texts / "
            f"config.data.{PER_ROW_FIELDS[side]}) must be a multiple of {multiple} (the "
            f"data-parallel devices{' x GradCache chunks' if grad_cache_chunk else ''})")
