"""Stopping a run whose steps keep coming out non-finite, with the rows that caused it.

The jitted step (training/step.py) already skips an update whose loss or gradient norm is not
finite, so the parameters, the optimiser state and every checkpoint stay finite. The train loop
feeds each step's `skipped_nonfinite` flag to a `NonFiniteGuard`; after
`config.train.max_consecutive_nonfinite` skipped steps in a row it raises `NonFiniteError`,
naming the steps and the records the input pipeline read for each of their batches.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_MAX_LISTED = 16  # records named per batch in the error (the rest are counted)


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient norm."""

  def __init__(self, message: str, step: int, batches: list[tuple[int, str]]):
    super().__init__(message)
    self.step = step
    self.batches = batches  # (step, description of its rows)


class NonFiniteGuard:
  """Counts skipped steps (in a row and in all) and raises after `max_consecutive` in a row."""

  def __init__(self, max_consecutive: int):
    if int(max_consecutive) < 1:
      raise ValueError(f"config.train.max_consecutive_nonfinite must be >= 1, got {max_consecutive}")
    self.max_consecutive = int(max_consecutive)
    self.total = 0
    self._run: list[tuple[int, str]] = []

  def finite(self) -> None:
    self._run = []

  def skipped(self, step: int, rows: str, loss: float, grad_norm: float) -> None:
    self.total += 1
    self._run.append((step, rows))
    log.warning("step %d: loss=%s grad_norm=%s: update skipped (%d in a row, %d allowed); "
                "batch rows: %s", step, loss, grad_norm, len(self._run), self.max_consecutive, rows)
    if len(self._run) >= self.max_consecutive:
      first = self._run[0][0]
      lines = "\n".join(f"  step {s}: {r}" for s, r in self._run)
      raise NonFiniteError(
          f"step {step}: {len(self._run)} consecutive steps (from step {first}) had a non-finite "
          f"loss or gradient norm (config.train.max_consecutive_nonfinite="
          f"{self.max_consecutive}); their updates were skipped and nothing was saved after step "
          f"{first - 1}, so the last checkpoint holds the parameters before them. The batches' "
          f"rows:\n{lines}", step, list(self._run))


def describe_rows(data_iterator, before: dict | None, after: dict | None) -> str:
  """The records the input pipeline read for one batch, from its state before and after it:
  source, position in the source's shuffled order, and where resolvable the file, byte offset
  and row id (this process's share of the global batch)."""
  host = _host_batch_iterator(data_iterator)
  if (isinstance(before, dict) and isinstance(after, dict)
      and isinstance(before.get("cursors"), dict) and isinstance(after.get("cursors"), dict)):
    # Weighted mixing: each source's read cursor moved over the batch's records.
    spans = {name: range(int(before["cursors"].get(name, 0)), int(end))
             for name, end in after["cursors"].items()}
  elif isinstance(before, dict) and "records" in before and host is not None:
    # Reference mixing: the batch's records are its rows in the epoch's plan (a row dropped for
    # its instruction was replaced by a later record of its source, not listed here).
    spans = {}
    for s, positions in host.mixer.rows(int(before["batch_index"])):
      spans.setdefault(host.specs[s].name, []).append(next(iter(positions)))
  else:
    return f"input pipeline state before the batch {before!r:.300}, after it {after!r:.300}"
  parts = []
  for name, positions in spans.items():
    if not len(positions):
      continue
    records = [_record(host, name, pos) for pos in positions[:_MAX_LISTED]]
    more = f", and {len(positions) - _MAX_LISTED} more" if len(positions) > _MAX_LISTED else ""
    span = (f"{positions[0]}..{positions[-1]} " if isinstance(positions, range) else "")
    parts.append(f"source {name!r} records {span}[{'; '.join(records)}{more}]")
  where = (f"batch {before.get('batch_index')} of process {before.get('process_index')}/"
           f"{before.get('process_count')}")
  return f"{where}: " + (", ".join(parts) or "no record read")


def _host_batch_iterator(it):
  """The reasonir_jax.data HostBatchIterator under a TrainIterator / PrefetchedBatches, if any."""
  for _ in range(4):
    if hasattr(it, "datasets") and hasattr(it, "specs"):
      return it
    it = getattr(it, "host_iter", None) or getattr(it, "inner", None)
    if it is None:
      return None
  return None


def _record(host, source: str, pos: int) -> str:
  """'file@offset row_id' of a record, or its position when it cannot be read back."""
  if host is None:
    return f"#{pos}"
  try:
    from reasonir_jax.data.example_codec import example_bytes_to_row
    s = [spec.name for spec in host.specs].index(source)
    path, offset, data = host.datasets[s][pos]
    try:
      row_id = repr(example_bytes_to_row(data).row_id)
    except ValueError as e:
      row_id = f"(unparsable: {e})"
    return f"#{pos} {path}@{offset} row_id={row_id}"
  except Exception as e:  # a best-effort description: never hide the NaN error behind another
    return f"#{pos} (not readable back: {type(e).__name__}: {e})"
