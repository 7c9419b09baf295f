"""Converts reference JSON-lines training data into our sharded TFRecords.

  python -m reasonir_jax.data.convert --input ROWS.jsonl --output DIR --num-shards N \
      [--name NAME] [--source SOURCE] [--documents BRIGHT_DIR | DOCS.(jsonl|parquet),...]

Input lines: {"query": [instruction, text], "pos": [[instruction, text], ...],
              "neg": [[instruction, text], ...]}  (optional "id" and "source" keys are kept, and
"weight", the row's loss weight: a finite number >= 0, default 1).
In the released HQ rows a positive is a BRIGHT document id, from any of the 12 BRIGHT corpora;
with --documents (a local copy of the BRIGHT dataset, whose documents/ files of every task are
read, or comma-separated files of `id`, `content` rows) such ids are replaced by the document
text. Only the ids the input names are held; an id found with two different texts is ambiguous
and joins nothing. A positive that is not found (or
that looks like an id when no --documents is given) is never written as text: the row is
rejected, counted, and listed in DIR/NAME.rejects.jsonl. A malformed line, or one whose query,
positive or negative text is empty or whitespace only (`neg[0]`, ...), is an error naming the
file, line number and field; then no output file is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Iterator

from tqdm import tqdm

from reasonir_jax.data.schema import TrainingRow, check_weight
from reasonir_jax.data.writer import write_rows

log = logging.getLogger(__name__)
_ID_MAX_CHARS = 200
_ROW_KEYS = ("query", "pos", "neg", "id", "source", "weight")  # every other key goes to metadata


class ConvertError(ValueError):
  pass


def document_files(spec: str) -> list[str]:
  """--documents: a local BRIGHT dataset copy (its documents/ files, every task present), or
  comma-separated .parquet / .jsonl files."""
  from reasonir_jax.eval import bright_data
  if os.path.isdir(os.path.join(spec, "documents")):
    try:
      return bright_data.documents_files(spec)
    except FileNotFoundError as e:
      raise ConvertError(f"--documents {spec!r}: {e}") from None
  files = [p for p in spec.split(",") if p]
  for path in files:
    if not os.path.isfile(path):
      raise ConvertError(f"--documents {path!r}: no such file (give files or a BRIGHT dataset directory)")
  return files


def _iter_documents(path: str):
  """(id, content) of one BRIGHT documents file (.parquet or .jsonl)."""
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    names = table.schema_arrow.names
    for col in ("id", "content"):
      if col not in names:
        raise ConvertError(f"{path}: no column {col!r} (has {names})")
    for batch in table.iter_batches(columns=["id", "content"], batch_size=4096):
      yield from zip(map(str, batch.column("id").to_pylist()), batch.column("content").to_pylist())
    return
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        yield str(obj["id"]), obj["content"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConvertError(f"{path}:{lineno}: bad document line ({e!r})") from None


def load_documents(spec: str, wanted: set[str] | None = None) -> dict[str, str]:
  """id -> content from BRIGHT documents (see document_files); with `wanted`, only those ids.
  An id that two files give different texts is left out (ambiguous), with a warning."""
  docs: dict[str, str] = {}
  where: dict[str, str] = {}
  ambiguous: dict[str, list[str]] = {}
  for path in document_files(spec):
    for doc_id, content in _iter_documents(path):
      if wanted is not None and doc_id not in wanted:
        continue
      if doc_id in ambiguous:
        ambiguous[doc_id].append(path)
      elif doc_id in docs and docs[doc_id] != content:
        ambiguous[doc_id] = [where.pop(doc_id), path]
        del docs[doc_id]
      elif doc_id not in docs:
        docs[doc_id], where[doc_id] = content, path
  if ambiguous:
    shown = "; ".join(f"{i!r} in {', '.join(p)}" for i, p in list(ambiguous.items())[:5])
    log.warning("%d document ids have different texts in different files and join nothing: %s",
                len(ambiguous), shown)
  return docs


def _wanted_ids(input_path: str) -> set[str]:
  """The id-like positives of the input (a first pass; malformed lines are left to the second)."""
  wanted = set()
  with open(input_path, encoding="utf-8") as f:
    for line in f:
      try:
        pos = json.loads(line).get("pos") or []
        wanted.update(p[1] for p in pos if isinstance(p, list) and len(p) == 2 and
                      isinstance(p[1], str) and _looks_like_id(p[1]))
      except (json.JSONDecodeError, AttributeError, TypeError):
        continue
  return wanted


def _looks_like_id(text: str) -> bool:
  return bool(text) and len(text) <= _ID_MAX_CHARS and not any(c.isspace() for c in text)


def _pair(value, where: str, field: str) -> tuple[str, str]:
  if (not isinstance(value, (list, tuple)) or len(value) != 2 or
      not all(isinstance(v, str) for v in value)):
    raise ConvertError(f"{where}: {field!r} must be [instruction, text] strings, got {value!r:.120}")
  return value[0], value[1]


def _pairs(obj, where: str, field: str, required: bool) -> list[tuple[str, str]]:
  if field not in obj:
    if required:
      raise ConvertError(f"{where}: missing field {field!r}")
    return []
  value = obj[field]
  if not isinstance(value, list) or (required and not value):
    raise ConvertError(f"{where}: {field!r} must be a non-empty list of [instruction, text]")
  return [_pair(v, where, f"{field}[{i}]") for i, v in enumerate(value)]


def _one_instruction(pairs, where: str, field: str) -> str:
  instructions = {inst for inst, _ in pairs}
  if len(instructions) > 1:
    raise ConvertError(f"{where}: all {field!r} entries must share one instruction, got {sorted(instructions)}")
  return next(iter(instructions), "")


def parse_line(obj, where: str, source: str, row_id: str,
               documents: dict[str, str] | None) -> tuple[TrainingRow | None, list[str]]:
  """(row, []) or (None, missing document ids) for one reference JSON object."""
  if not isinstance(obj, dict):
    raise ConvertError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if "query" not in obj:
    raise ConvertError(f"{where}: missing field 'query'")
  q_inst, query = _pair(obj["query"], where, "query")
  pos = _pairs(obj, where, "pos", required=True)
  neg = _pairs(obj, where, "neg", required=False)
  positives, missing, empty = [], [], []
  for i, (_, text) in enumerate(pos):
    if documents is not None and text in documents:
      doc = documents[text]
      positives.append(doc)
      if not isinstance(doc, str) or not doc.strip():  # a null parquet cell counts as empty
        empty.append(f"pos[{i}] (document {text!r})")
    elif _looks_like_id(text):
      missing.append(text)
    else:
      positives.append(text)
      if not text.strip():
        empty.append(f"pos[{i}]")
  # A text with no token embeds to nothing: refused like any malformed line.
  empty = (["query"] if not query.strip() else []) + empty
  empty += [f"neg[{i}]" for i, (_, text) in enumerate(neg) if not text.strip()]
  if empty:
    raise ConvertError(f"{where}: empty or whitespace-only text in {', '.join(empty)}")
  weight = obj.get("weight", 1.0)
  weight_problem = check_weight(weight)
  if weight_problem:
    raise ConvertError(f"{where}: field 'weight' {weight_problem}")
  if missing:
    return None, missing
  row = TrainingRow(
      row_id=str(obj.get("id", row_id)), source=str(obj.get("source", source)), query=query,
      positives=positives, negatives=[t for _, t in neg], query_instruction=q_inst,
      positive_instruction=_one_instruction(pos, where, "pos"),
      negative_instruction=_one_instruction(neg, where, "neg"),
      metadata=json.dumps({k: obj[k] for k in obj if k not in _ROW_KEYS}, ensure_ascii=False,
                          sort_keys=True),
      weight=float(weight))
  try:
    return row.validate(), []
  except ValueError as e:
    raise ConvertError(f"{where}: {e}") from None


def iter_converted(input_path: str, source: str, documents: dict[str, str] | None,
                   rejects: list[dict], progress: bool = True) -> Iterator[TrainingRow]:
  name = os.path.splitext(os.path.basename(input_path))[0]
  with open(input_path, encoding="utf-8") as f:
    for lineno, line in enumerate(tqdm(f, desc=f"convert {name}", unit=" rows", disable=not progress), 1):
      if not line.strip():
        continue
      where = f"{input_path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConvertError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
      row, missing = parse_line(obj, where, source, f"{source}-{name}-{lineno}", documents)
      if row is None:
        rejects.append({"line": lineno, "missing_document_ids": missing})
        continue
      yield row


def convert(input_path: str, output_dir: str, num_shards: int, name: str | None = None,
            source: str | None = None, documents_path: str | None = None,
            progress: bool = True) -> dict:
  """Converts one JSONL file; returns a report dict (paths, rows written, rejects)."""
  if not os.path.isfile(input_path):
    raise ConvertError(f"--input {input_path!r}: no such file")
  name = name or os.path.splitext(os.path.basename(input_path))[0]
  source = source or name
  documents = load_documents(documents_path, _wanted_ids(input_path)) if documents_path else None
  rejects: list[dict] = []
  counter = {"rows": 0}

  def counted():
    for row in iter_converted(input_path, source, documents, rejects, progress):
      counter["rows"] += 1
      yield row

  paths = write_rows(counted(), output_dir, name, num_shards)
  report = {"paths": paths, "rows_written": counter["rows"], "rows_rejected": len(rejects),
            "missing_document_ids": sorted({i for r in rejects for i in r["missing_document_ids"]})}
  if rejects:
    rejects_path = os.path.join(output_dir, f"{name}.rejects.jsonl")
    with open(rejects_path, "w", encoding="utf-8") as f:
      for r in rejects:
        f.write(json.dumps(r) + "\n")
    report["rejects_path"] = rejects_path
    hint = "" if documents is not None else " (no --documents given: pass the BRIGHT documents file)"
    log.warning("%d rows rejected: positive document id not found%s; %d distinct ids, listed in %s",
                len(rejects), hint, len(report["missing_document_ids"]), rejects_path)
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="Convert reference JSONL training rows to TFRecords.")
  parser.add_argument("--input", required=True, help="reference JSON-lines file")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--num-shards", type=int, required=True)
  parser.add_argument("--name", default=None, help="shard file prefix (default: input file name)")
  parser.add_argument("--source", default=None, help="source name stored in rows (default: --name)")
  parser.add_argument("--documents", default=None,
                      help="BRIGHT documents to join HQ ids: a local BRIGHT dataset directory (the "
                      "documents/ files of every task) or comma-separated .parquet/.jsonl files")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    report = convert(args.input, args.output, args.num_shards, args.name, args.source, args.documents)
  except ConvertError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: v for k, v in report.items() if k != "missing_document_ids"}, indent=1))
  if report["rows_rejected"]:
    print(f"{report['rows_rejected']} rows rejected; missing ids: "
          f"{report['missing_document_ids'][:20]}{' ...' if len(report['missing_document_ids']) > 20 else ''}",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
