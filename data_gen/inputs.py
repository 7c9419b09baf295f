"""Reading pipeline inputs and splitting them over shard machines.

- Seed documents: JSON lines with `id` and `text`, or the BRIGHT documents layout (`id`,
  `content`) as JSON lines or parquet. An optional `domain` field names the subject area, an
  optional `task` field the BRIGHT task (the seed selection takes its top N per task). A local
  copy of the BRIGHT dataset (a directory holding `documents/`) gives the documents of every task
  found there; a file under a `documents/` folder named for a BRIGHT task (`biology-00000-of-
  00001.parquet`) gives that task, and its ids become `TASK/ID` (BRIGHT ids are unique only
  within a task).
- Training rows (for `negatives` and `mine`): our TFRecords, JSON lines of `TrainingRow` fields,
  or the reference JSON-lines format `{"query": [instr, text], "pos": [[instr, text]], ...}`.
- Sharding: an input belongs to shard `stable_hash(id) % num_shards`, so N machines split the
  work with no coordination, and the split does not depend on file order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Iterable, Sequence

from reasonir_jax import paths as paths_lib
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.eval import bright_data

_ROW_FIELDS = {f.name for f in dataclasses.fields(TrainingRow)}


def expand_inputs(spec: str | Sequence[str]) -> list[str]:
  """Files of comma-separated paths/globs (directories give their *.jsonl/*.parquet/*.tfrecord; a
  BRIGHT dataset directory gives its documents/ files)."""
  items = [p for p in spec.split(",") if p] if isinstance(spec, str) else list(spec)
  paths: list[str] = []
  for item in items:
    if os.path.isdir(os.path.join(item, "documents")):
      try:
        paths.extend(bright_data.documents_files(item))
      except FileNotFoundError as e:
        raise FileNotFoundError(f"--input {item!r}: {e}") from None
    elif os.path.isdir(item):
      try:
        paths.extend(paths_lib.expand([item], ("jsonl", "json", "parquet", "tfrecord")))
      except FileNotFoundError:
        raise FileNotFoundError(
            f"--input {item!r}: directory has no .jsonl/.parquet/.tfrecord") from None
    else:
      try:
        paths.extend(paths_lib.expand([item]))
      except FileNotFoundError as e:
        raise FileNotFoundError(f"--input {item!r}: {e}") from None
  if not paths:
    raise FileNotFoundError(f"--input {spec!r}: no input files")
  return paths


_BRIGHT_FILE = re.compile(r"^(?P<task>[a-z_]+?)(-\d+-of-\d+)?\.(parquet|jsonl)$")


def bright_task_of(path: str) -> str | None:
  """The BRIGHT task a `documents/<task>[-0000i-of-0000n].(parquet|jsonl)` file holds, else None."""
  if os.path.basename(os.path.dirname(os.path.abspath(path))) != "documents":
    return None
  m = _BRIGHT_FILE.match(os.path.basename(path))
  return m.group("task") if m and m.group("task") in bright_data.TASKS else None


def stable_hash(key: str) -> int:
  return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def shard_of(key: str, num_shards: int) -> int:
  return stable_hash(key) % num_shards


def select_shard(items: Iterable, key, shard_index: int, num_shards: int) -> list:
  """The items whose `key(item)` hashes to `shard_index`."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"--shard-index {shard_index} must lie in [0, --num-shards={num_shards})")
  return [it for it in items if shard_of(key(it), num_shards) == shard_index]


def _iter_records(path: str):
  """(location, dict) for each record of a .jsonl/.json or .parquet file."""
  return paths_lib.iter_records(path)


def read_documents(spec: str | Sequence[str]) -> list[dict]:
  """Seed documents as dicts with `id` (str), `text`, and `domain` when given. Duplicate ids
  are an error (the ledger keys on them)."""
  return list(iter_documents(spec))


def iter_documents(spec: str | Sequence[str]):
  """read_documents, streaming: one document at a time (only the ids are remembered)."""
  seen = {}
  for path in expand_inputs(spec):
    file_task = bright_task_of(path)
    for where, rec in _iter_records(path):
      if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object")
      if "id" not in rec:
        raise ValueError(f"{where}: missing field 'id'")
      text = rec.get("text", rec.get("content"))
      if not isinstance(text, str):
        raise ValueError(f"{where}: needs a string field 'text' (or 'content', BRIGHT layout)")
      if not text.strip():  # it would become an empty positive
        raise ValueError(f"{where}: document {rec['id']!r} has an empty or whitespace-only text")
      doc_id = str(rec["id"]) if file_task is None else f"{file_task}/{rec['id']}"
      if doc_id in seen:
        raise ValueError(f"{where}: duplicate id {doc_id!r} (first at {seen[doc_id]})")
      seen[doc_id] = where
      doc = {"id": doc_id, "text": text}
      if rec.get("domain"):
        doc["domain"] = str(rec["domain"])
      task = rec.get("task") or file_task
      if task:
        doc["task"] = str(task)
      if rec.get("quality_score") is not None:  # written by `python -m data_gen filter`
        doc["quality_score"] = float(rec["quality_score"])
      yield doc


def row_from_record(rec: dict, where: str) -> TrainingRow:
  """A TrainingRow from our JSON field layout or the reference `query`/`pos`/`neg` layout."""
  if "row_id" in rec:
    unknown = rec.keys() - _ROW_FIELDS
    if unknown:
      raise ValueError(f"{where}: unknown TrainingRow field(s) {sorted(unknown)}")
    try:
      return TrainingRow(**rec).validate()
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: {e}") from None
  if "query" in rec and "pos" in rec:
    def pair(value, field):
      if (not isinstance(value, (list, tuple)) or len(value) != 2 or
          not all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}: field {field!r} must be [instruction, text]")
      return value
    q_instr, query = pair(rec["query"], "query")
    pos = [pair(p, "pos") for p in rec["pos"]]
    neg = [pair(n, "neg") for n in rec.get("neg", [])]
    row_id = str(rec.get("id") or hashlib.sha1(query.encode()).hexdigest()[:16])
    try:
      return TrainingRow(
          row_id=row_id, source=str(rec.get("source", "jsonl")), query=query,
          positives=[p[1] for p in pos], negatives=[n[1] for n in neg],
          query_instruction=q_instr, positive_instruction=pos[0][0] if pos else "",
          negative_instruction=neg[0][0] if neg else "", weight=rec.get("weight", 1.0)).validate()
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
  raise ValueError(f"{where}: expected TrainingRow fields (row_id, query, positives, ...) or "
                   "the reference layout (query, pos, neg)")


def read_training_rows(spec: str | Sequence[str]) -> list[TrainingRow]:
  """Rows from .tfrecord files (our format) and .jsonl files; duplicate row ids are an error."""
  from reasonir_jax.data.reader import read_rows
  rows, seen = [], set()
  for path in expand_inputs(spec):
    if path.endswith(".tfrecord") or ".tfrecord" in os.path.basename(path):
      batch = list(read_rows([path]))
    else:
      batch = [row_from_record(rec, where) for where, rec in _iter_records(path)]
    for row in batch:
      if row.row_id in seen:
        raise ValueError(f"{path}: duplicate row_id {row.row_id!r}")
      seen.add(row.row_id)
      rows.append(row)
  return rows
