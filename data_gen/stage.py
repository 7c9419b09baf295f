"""The resumable stage: exactly-once output across crashes.

A run appends, per batch of inputs, its generated rows to `rows.jsonl`, its rejects to
`rejects.jsonl`, and then one ledger entry per input to `ledger.jsonl`; each file is flushed and
fsynced before the next is written. Every record carries the batch's random key, and the ledger
entry is the commit: a row or reject counts only if the ledger holds its input id with the same
batch key. After a crash (even kill -9) a restart truncates each file's trailing partial line,
skips the ids in the ledger, and redoes the rest; rows of an uncommitted batch are ignored.
So every input appears exactly once in the final output, none lost, none duplicated.
A row with an empty or whitespace-only text is refused (`TrainingRow.validate`): at commit,
before anything of its batch is written, or on reading back an older stage (file and line).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from typing import IO, Iterable, Iterator

from reasonir_jax import paths
from reasonir_jax.data.schema import TrainingRow


@dataclasses.dataclass
class Outcome:
  """What one input produced: rows (accepted) or a reject, plus per-step attempt counts."""
  input_id: str
  rows: list[TrainingRow] = dataclasses.field(default_factory=list)
  reject: dict | None = None  # {"step", "reason", "attempts": [...]}
  steps: dict[str, dict] = dataclasses.field(default_factory=dict)  # step -> {attempts, ok}


def _repair_tail(path: str) -> None:
  """Drops a trailing partial line (a write cut short by a crash)."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    # Scan back to the last newline.
    pos = size
    chunk = 1 << 16
    while pos > 0:
      start = max(0, pos - chunk)
      f.seek(start)
      data = f.read(pos - start)
      nl = data.rfind(b"\n")
      if nl >= 0:
        f.truncate(start + nl + 1)
        break
      pos = start
    else:
      f.truncate(0)
    f.flush()
    os.fsync(f.fileno())


def _read_jsonl(path: str) -> Iterator[dict]:
  for _, rec in _read_jsonl_numbered(path):
    yield rec


def _read_jsonl_numbered(path: str) -> Iterator[tuple[int, dict]]:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        try:
          yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: corrupt stage record ({e})") from None


def _check_row(row: TrainingRow, where: str, input_id: str) -> TrainingRow:
  """The row, validated (no empty or whitespace-only text); an error names where it is."""
  try:
    return row.validate()
  except ValueError as e:
    raise ValueError(f"{where} (input {input_id!r}): {e}") from None


class Stage:
  """One shard's work directory: rows.jsonl, rejects.jsonl, ledger.jsonl."""

  def __init__(self, stage_dir: str):
    self.dir = stage_dir
    self.rows_path = os.path.join(stage_dir, "rows.jsonl")
    self.rejects_path = os.path.join(stage_dir, "rejects.jsonl")
    self.ledger_path = os.path.join(stage_dir, "ledger.jsonl")
    os.makedirs(stage_dir, exist_ok=True)
    for path in (self.rows_path, self.rejects_path, self.ledger_path):
      _repair_tail(path)
    self.ledger: dict[str, dict] = {}
    for entry in _read_jsonl(self.ledger_path):
      self.ledger[entry["id"]] = entry

  @property
  def done_ids(self) -> set[str]:
    return set(self.ledger)

  @staticmethod
  def _append(path: str, records: list[dict]) -> None:
    if not records:
      return
    with open(path, "a", encoding="utf-8") as f:
      f.write("".join(json_line(r) for r in records))
      f.flush()
      os.fsync(f.fileno())

  def commit(self, outcomes: list[Outcome]) -> None:
    """Durably records a batch; the ledger write (last) is the commit point."""
    batch = uuid.uuid4().hex
    rows, rejects, entries = [], [], []
    for o in outcomes:
      if o.input_id in self.ledger:
        raise ValueError(f"input {o.input_id!r} is already committed")
      # Refused before anything of the batch is written: its inputs stay to do.
      for k, r in enumerate(o.rows):
        _check_row(r, f"{self.rows_path} (batch not written, its inputs stay to do): row {k}",
                   o.input_id)
      rows += [{"input_id": o.input_id, "batch": batch, "row": dataclasses.asdict(r)}
               for r in o.rows]
      if o.reject is not None:
        rejects.append({"input_id": o.input_id, "batch": batch, **o.reject})
      entries.append({"id": o.input_id, "batch": batch,
                      "status": "rejected" if o.reject is not None else "ok",
                      "rows": len(o.rows), "steps": o.steps})
    self._append(self.rows_path, rows)
    self._append(self.rejects_path, rejects)
    self._append(self.ledger_path, entries)
    for e in entries:
      self.ledger[e["id"]] = e

  def _committed(self, path: str) -> Iterator[tuple[int, dict]]:
    for lineno, rec in _read_jsonl_numbered(path):
      entry = self.ledger.get(rec["input_id"])
      if entry is not None and entry["batch"] == rec["batch"]:
        yield lineno, rec

  def committed_rows(self) -> Iterator[tuple[str, TrainingRow]]:
    """(input id, row) of every committed row, in the order they were generated; a row with an
    empty text (a stage written before rows were checked) is an error naming file and line."""
    for lineno, rec in self._committed(self.rows_path):
      yield rec["input_id"], _check_row(TrainingRow(**rec["row"]), f"{self.rows_path}:{lineno}",
                                        rec["input_id"])

  def committed_rejects(self) -> Iterator[dict]:
    for _, rec in self._committed(self.rejects_path):
      yield {k: v for k, v in rec.items() if k != "batch"}

  def step_counts(self, ids: set[str] | None = None) -> dict[str, dict[str, int]]:
    """Per step: inputs accepted, rejected, and retries (attempts beyond the first), over the
    committed inputs (those in `ids` when given)."""
    counts: dict[str, dict[str, int]] = {}
    for input_id, entry in self.ledger.items():
      if ids is not None and input_id not in ids:
        continue
      for step, info in entry.get("steps", {}).items():
        c = counts.setdefault(step, {"accepted": 0, "rejected": 0, "retried": 0})
        c["accepted" if info["ok"] else "rejected"] += 1
        c["retried"] += max(0, info["attempts"] - 1)
    return counts


def atomic_writer(path: str) -> contextlib.AbstractContextManager[IO[str]]:
  """A text file readers see whole or not at all (reasonir_jax.paths.atomic_write)."""
  return paths.atomic_write(path)


def json_line(record: dict) -> str:
  return json.dumps(record, ensure_ascii=False) + "\n"


def write_text_atomic(path: str, text: str) -> None:
  with atomic_writer(path) as f:
    f.write(text)


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
  """JSON lines, streamed (records may be a generator), atomically as atomic_writer."""
  with atomic_writer(path) as f:
    for r in records:
      f.write(json_line(r))
