"""The training input pipeline: TFRecord files -> tokenized, padded, device-sharded batches.

Stages (per JAX process):
  1. sources.py: each source's records are cut into equal contiguous shares, one per process
     (a Grain slice of an offset index over the source's files); Grain shuffles a share (new
     permutation each epoch, per seed). mixing.py: which records make up each batch (the
     reference's epoch plan, every process the same; or weighted source draws).
  2. batching.py (HostBatchIterator, a Grain DatasetIterator): reading the planned records, row
     parsing, positive/negative sampling, dropping of over-long instructions, tokenization
     (`num_workers` threads per batch), bucket padding.
  3. Grain's ThreadPrefetchDatasetIterator keeps `prefetch` batches ready in a background thread;
     its state is the position after the last batch handed out.
  4. TrainIterator (here): agrees on the bucket lengths across processes, builds global
     jax.Arrays with `make_array_from_process_local_data`, keeps the next batch on device.

Grain's own mixing (`MapDataset.mix`) interleaves sources in fixed proportions; the reference
plan's single-source and remainder batches, and weighted draws per batch, are ours (mixing.py).

Entry points: `make_train_iterator` (the trainer) and `make_host_iterator` (numpy; tests, bench).
Both iterators are Grain DatasetIterators with get_state()/set_state() (a JSON-serialisable
dict; checkpoint.py saves it with Grain's checkpoint handler) and stats().
"""
from __future__ import annotations

import copy
import json

import grain
import numpy as np

from reasonir_jax.data.batching import Batch, HostBatchIterator, RawBatch, process_info

__all__ = ["make_train_iterator", "make_host_iterator", "TrainIterator", "HostBatchIterator",
           "PrefetchedBatches", "RawBatch"]


class PrefetchedBatches(grain.experimental.ThreadPrefetchDatasetIterator):
  """Grain's prefetch thread over a HostBatchIterator, with the host iterator's stats() (the
  ones of the last batch handed out) and its JSON-bytes state form."""

  def __init__(self, inner: HostBatchIterator, depth: int):
    super().__init__(inner, depth)
    self.inner = inner

  def get_state(self):
    return copy.deepcopy(super().get_state())

  def set_state(self, state):
    super().set_state(json.loads(state) if isinstance(state, (bytes, str)) else state)

  def stats(self):
    return copy.deepcopy(super().get_state()["stats"])


def make_host_iterator(config, tokenizer=None, *, process_index: int | None = None,
                       process_count: int | None = None, local_batch_size: int | None = None,
                       prefetch: int | None = None, num_workers: int | None = None,
                       layout=None):
  """Numpy batches of this process. `prefetch` (default config.data.prefetch) batches are kept
  ready by Grain's prefetch thread (0: none, everything runs in the caller), with `num_workers`
  (default config.data.num_workers) tokenizer threads; call close() to stop them. `tokenizer` is
  a PromptTokenizer, an HF tokenizer, a directory, or None (config.data.tokenizer, else the
  model directory config.init_from, else the shipped sample tokenizer). `layout` (a
  data.layout.BatchLayout; default the config's) is the trainer's, handed over by train.run."""
  workers = config.data.get("num_workers", 0) if num_workers is None else num_workers
  it = HostBatchIterator(config, tokenizer, process_index=process_index,
                         process_count=process_count, local_batch_size=local_batch_size,
                         num_workers=workers, layout=layout)
  depth = config.data.get("prefetch", 2) if prefetch is None else prefetch
  return PrefetchedBatches(it, depth) if depth else it


class TrainIterator(grain.DatasetIterator):
  """Global batches as jax.Arrays in `NamedSharding(mesh, batch_spec)`, one batch ahead on
  device. Multi-process: the bucket lengths of a global batch are the maximum over processes
  (one tiny all-gather per step, in program order on every process). Its state is the host
  iterator's after the last batch handed out (not after the one waiting on device)."""

  def __init__(self, host_iter, mesh, batch_spec, process_count: int, device_prefetch: int = 1):
    super().__init__()
    import jax
    self._jax = jax
    self.host_iter = host_iter
    self.sharding = jax.sharding.NamedSharding(mesh, batch_spec)
    # [B] per-row arrays (batch["row"]) take the batch axis of the [B, L] spec only.
    self.row_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*batch_spec[:1]))
    self.process_count = process_count
    self.device_prefetch = max(0, int(device_prefetch))
    self._buffer = []  # (device batch, state after it, stats)
    self._state = host_iter.get_state()
    self._host_stats = host_iter.stats()

  def _agree_lengths(self, batch: Batch) -> Batch:
    if self.process_count == 1:
      return batch
    from jax.experimental import multihost_utils
    local = np.asarray([batch["query"]["input_ids"].shape[1],
                        batch["passage"]["input_ids"].shape[1]], np.int32)
    lq, lp = np.max(multihost_utils.process_allgather(local), axis=0)
    return {**batch, "query": _pad_to(batch["query"], int(lq), self.host_iter),
            "passage": _pad_to(batch["passage"], int(lp), self.host_iter)}

  def _to_device(self, batch: Batch):
    batch = self._agree_lengths(batch)
    make = self._jax.make_array_from_process_local_data
    return {part: {k: make(self.sharding if v.ndim > 1 else self.row_sharding, v) for k, v in arrays.items()}
            for part, arrays in batch.items()}

  def _fill(self):
    while len(self._buffer) <= self.device_prefetch:
      batch = next(self.host_iter)
      self._buffer.append((self._to_device(batch), self.host_iter.get_state(),
                           self.host_iter.stats()))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    batch, self._state, self._host_stats = self._buffer.pop(0)
    if self.device_prefetch:
      self._fill()  # start the next transfer before the caller's step runs
    return batch

  def get_state(self):
    return json.loads(json.dumps(self._state))

  def set_state(self, state):
    self._buffer = []
    self.host_iter.set_state(state)  # both host iterators also take the JSON form
    self._state, self._host_stats = self.host_iter.get_state(), self.host_iter.stats()

  def stats(self):
    return json.loads(json.dumps(self._host_stats))

  def close(self):
    if hasattr(self.host_iter, "close"):
      self.host_iter.close()
    super().close()


def _pad_to(arrays: dict[str, np.ndarray], length: int, host_iter) -> dict[str, np.ndarray]:
  n, cur = arrays["input_ids"].shape
  if cur == length:
    return arrays
  pad_id = _pad_id(host_iter)
  out = {}
  for k, v in arrays.items():
    fill = pad_id if k == "input_ids" else 0
    out[k] = np.concatenate([v, np.full((n, length - cur), fill, v.dtype)], axis=1)
  return out


def _pad_id(host_iter) -> int:
  inner = getattr(host_iter, "inner", host_iter)
  return inner.tok.pad_id


def make_train_iterator(config, tokenizer, mesh, batch_spec, *, process_index: int | None = None,
                        process_count: int | None = None, layout=None):
  """The trainer's entry point: an iterator of global batches
    {"query": {input_ids, attention_mask, pool_mask}: int32[B, Lq],
     "passage": {...}: int32[B*G, Lp],  (passages of query i: rows i*G..i*G+G-1, positive first)
     "row": {"weight": float32[B]}}  (each query's TrainingRow.weight)
  placed in NamedSharding(mesh, batch_spec), with get_state()/set_state()/stats()."""
  pi, pc = process_info(process_index, process_count)
  host = make_host_iterator(config, tokenizer, process_index=pi, process_count=pc, layout=layout)
  return TrainIterator(host, mesh, batch_spec, pc)
