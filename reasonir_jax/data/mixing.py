"""Which records make up each batch: the reference's epoch plan (default) or weighted draws.

`config.data.mixing`:
  "reference" (GritLM's `CustomRandomSampler`, which ReasonIR trains with): every epoch, each
      source's records are shuffled on their own and cut into single-source global batches; the
      incomplete remainders are concatenated in a random source order and cut into mixed batches
      (a last incomplete one is left out); then all batches are shuffled. Sources come in
      proportion to their size, each record at most once per epoch; every epoch has a new
      permutation (deterministic in the seed). Source weights are not allowed here.
  "weighted": the source of each global batch (or, with data.single_source_batches=False, of
      each row) is drawn with replacement by the sources' weights; each source is read as an
      endless reshuffled stream.

Multi-process: a global batch of B rows is `process_count` local batches of b = B / P rows, each
process reading its own share of the records (sources.py: equal shares). The reference plan is
made from the record counts of every source on every process, so every process computes the
same sequence of batch kinds (source s, or mixed) and reads its b rows of each from its own
records. A source gives min over processes of floor(n_ps / b) single-source batches; what a
process has beyond that goes to its remainder pool, which gives min over processes of
floor(pool_p / b) mixed batches (with equal shares the minima are every process's own numbers).
With one process this is the reference's sampler exactly.

A mixer hands out, for each local row of a batch, its source and the stream positions to try in
order (`sources.shuffled_records`: position e * n + k is the k-th record of epoch e's
permutation); the batching code reads them until a row is usable, so a dropped row (too long an
instruction, or a skipped corrupt record) is replaced by the next record of the same source in
the epoch's order that the batch does not already hold (that record then comes twice in the
epoch; the drops are counted in the input stats).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

MODES = ("reference", "weighted")


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"config.data.mixing={mode!r}: expected one of {', '.join(map(repr, MODES))}")
  return mode


class WeightedMixer:
  """Sources drawn with replacement by weight; per-source read cursors (today's state)."""

  def __init__(self, names: list[str], weights: list[float], local_sizes: list[int],
               local_batch: int, process_index: int, seed: int, single_source: bool):
    self.names = names
    w = np.asarray(weights, np.float64)
    self.weights = w / w.sum()
    self.sizes = [int(n) for n in local_sizes]
    self.local_batch = int(local_batch)
    self.process_index = int(process_index)
    self.seed = int(seed)
    self.single_source = bool(single_source)
    self.cursors = [0] * len(names)

  def source_plan(self, batch_index: int) -> np.ndarray:
    """Source id of every local row of a batch. With single_source_batches the choice depends
    only on (seed, batch_index), so every process picks the same source for a global batch."""
    if self.single_source:
      rng = np.random.default_rng([self.seed, batch_index])
      return np.full(self.local_batch, rng.choice(len(self.names), p=self.weights))
    rng = np.random.default_rng([self.seed, batch_index, self.process_index, 1])
    return rng.choice(len(self.names), size=self.local_batch, p=self.weights)

  def rows(self, batch_index: int) -> list[tuple[int, Iterator[int]]]:
    return [(int(s), self._next_positions(int(s))) for s in self.source_plan(batch_index)]

  def _next_positions(self, s: int) -> Iterator[int]:
    # Lazy: the cursor moves as positions are taken (rows are filled one after another).
    for _ in range(self.sizes[s] + 1):
      pos = self.cursors[s]
      self.cursors[s] += 1
      yield pos

  def get_state(self, batch_index: int) -> dict[str, Any]:
    return {"cursors": dict(zip(self.names, self.cursors))}

  def set_state(self, state: dict[str, Any]) -> None:
    _check_state(state, "cursors", "read cursors", "reference", self.names)
    self.cursors = [int(state["cursors"][n]) for n in self.names]


def _check_state(state: dict, key: str, what: str, other_mode: str, names) -> None:
  """A saved state of this mode (it has `key`) over the configured sources, or a clear error."""
  if key not in state:
    raise ValueError(f"input pipeline state was written with config.data.mixing='{other_mode}' "
                     f"(it has no {what}); resume with --config.data.mixing={other_mode}")
  if sorted(state[key]) != sorted(names):
    raise ValueError(f"input pipeline state has sources {sorted(state[key])}, "
                     f"config.data.sources has {sorted(names)}")


def reference_layout(counts: np.ndarray, local_batch: int) -> tuple[np.ndarray, int]:
  """(single-source batches per source, mixed batches) of one epoch, from counts[p, s] (records
  of source s on process p) and the local batch size."""
  counts = np.asarray(counts, np.int64)
  single = (counts // local_batch).min(axis=0)
  pool = (counts - single[None, :] * local_batch).sum(axis=1)
  return single, int((pool // local_batch).min())


class EpochPlan:
  """One epoch of the reference plan as one process reads it."""

  def __init__(self, counts: np.ndarray, local_batch: int, process_index: int, seed: int,
               epoch: int):
    single, mixed = reference_layout(counts, local_batch)
    b = local_batch
    rng = np.random.default_rng([seed, epoch, 3])  # no process index: the same on every process
    order = rng.permutation(len(single))  # the order the remainders are concatenated in
    kinds = np.concatenate([np.repeat(np.arange(len(single)), single), np.full(mixed, -1)])
    self.kinds = rng.permutation(kinds)  # source id of each batch, -1 = mixed
    # The t-th batch of a kind takes rows t*b .. t*b+b-1 of its source (or of the pool).
    self.first = np.zeros(len(self.kinds), np.int64)
    for kind in np.unique(self.kinds):
      at = np.flatnonzero(self.kinds == kind)
      self.first[at] = np.arange(len(at)) * b
    local = np.asarray(counts, np.int64)[process_index]
    self.pool = [(int(s), k) for s in order for k in range(int(single[s]) * b, int(local[s]))]
    self.local_batch = b

  def __len__(self) -> int:
    return len(self.kinds)

  def rows(self, j: int) -> list[tuple[int, int]]:
    """(source, index in the source's epoch order) of each local row of batch j."""
    kind, first = int(self.kinds[j]), int(self.first[j])
    if kind >= 0:
      return [(kind, first + i) for i in range(self.local_batch)]
    return self.pool[first:first + self.local_batch]


class ReferenceMixer:
  """GritLM's epoch plan (module docstring); the state is (epoch, batch within the epoch)."""

  def __init__(self, names: list[str], counts: np.ndarray, local_batch: int,
               process_index: int, seed: int):
    self.names = names
    self.counts = np.asarray(counts, np.int64)  # [process, source]
    self.local_batch = int(local_batch)
    self.process_index = int(process_index)
    self.seed = int(seed)
    single, mixed = reference_layout(self.counts, self.local_batch)
    self.batches_per_epoch = int(single.sum()) + mixed
    total = int(self.counts.sum())
    global_batch = self.local_batch * len(self.counts)
    if self.batches_per_epoch == 0:
      raise ValueError(
          f"config.data.mixing='reference': the sources hold {total} records "
          f"({self._per_source()}), not one global batch of train.global_batch_size "
          f"{global_batch} per epoch")
    left_out = total - self.batches_per_epoch * global_batch
    log.info("reference mixing: %d batches per epoch of %d records: single-source %s, %d mixed; "
             "%d records left out each epoch", self.batches_per_epoch, global_batch,
             dict(zip(names, single.tolist())), mixed, left_out)
    self._plan = None

  def _per_source(self) -> str:
    return ", ".join(f"{n}: {int(c)}" for n, c in zip(self.names, self.counts.sum(axis=0)))

  def plan(self, epoch: int) -> EpochPlan:
    if self._plan is None or self._plan[0] != epoch:
      self._plan = (epoch, EpochPlan(self.counts, self.local_batch, self.process_index,
                                     self.seed, epoch))
    return self._plan[1]

  def rows(self, batch_index: int) -> list[tuple[int, Iterator[int]]]:
    epoch, j = divmod(batch_index, self.batches_per_epoch)
    n = self.counts[self.process_index]
    return [(s, _from(epoch, k, int(n[s]))) for s, k in self.plan(epoch).rows(j)]

  def get_state(self, batch_index: int) -> dict[str, Any]:
    """The position of the next batch: its epoch and its index in the epoch's plan."""
    epoch, j = divmod(batch_index, self.batches_per_epoch)
    return {"epoch": epoch, "epoch_batch": j,
            "records": {n: self.counts[:, i].tolist() for i, n in enumerate(self.names)}}

  def set_state(self, state: dict[str, Any]) -> None:
    _check_state(state, "records", "reference batch plan", "weighted", self.names)
    for i, name in enumerate(self.names):
      if list(state["records"][name]) != self.counts[:, i].tolist():
        raise ValueError(
            f"source {name!r} has {self.counts[:, i].tolist()} records per process, the input "
            f"pipeline state's batch plan was made for {state['records'][name]}: the data changed "
            f"since the checkpoint, so the run cannot continue exactly")
    epoch, j = int(state["epoch"]), int(state["epoch_batch"])
    if epoch * self.batches_per_epoch + j != int(state["batch_index"]):
      raise ValueError(f"input pipeline state: epoch {epoch}, batch {j} of an epoch of "
                       f"{self.batches_per_epoch} is not batch {state['batch_index']}")


def _from(epoch: int, k: int, n: int) -> Iterator[int]:
  """Stream positions of record k of an epoch, then of the records after it in the same epoch's
  order (replacements for an unusable row), one full pass at most."""
  for t in range(n):
    yield epoch * n + (k + t) % n
