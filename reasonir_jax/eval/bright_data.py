"""Reading a local copy of the BRIGHT dataset: tasks, query instructions, examples and corpora.

Layout (the Hugging Face dataset repository, downloaded as files):

  DIR/examples/<task>-00000-of-00001.parquet       id, query, reasoning, gold_ids, gold_ids_long, excluded_ids
  DIR/documents/<task>-00000-of-00001.parquet      id, content
  DIR/long_documents/<task>-00000-of-00001.parquet id, content
  DIR/gpt4_reason/<task>-00000-of-00001.parquet    same fields as examples; `query` is GPT-4's rewrite

Several shards per task (`<task>-0000i-of-0000n.parquet`), `<task>.parquet` and JSON lines
(`<task>.jsonl`) with the same fields are read too. DIR may be remote (gs://...; reasonir_jax.paths),
and so may the output files written here.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from reasonir_jax import paths
from reasonir_jax.eval import protocol

STACKEXCHANGE_TASKS = ("biology", "earth_science", "economics", "psychology", "robotics",
                       "stackoverflow", "sustainable_living")
TASKS = STACKEXCHANGE_TASKS + ("leetcode", "pony", "aops", "theoremqa_theorems",
                               "theoremqa_questions")
MATH_TASKS = ("aops", "theoremqa_theorems", "theoremqa_questions")
CODE_TASKS = ("leetcode",)

LAYOUT_HELP = (
    "expected a local copy of the BRIGHT dataset repository: "
    "examples/<task>-00000-of-00001.parquet, documents/<task>-*.parquet, "
    "long_documents/<task>-*.parquet, gpt4_reason/<task>-*.parquet "
    "(or <task>.jsonl with the same fields)")


LONG_TASKS = protocol.LONG_TASKS  # the tasks with a long_documents corpus
assert set(LONG_TASKS) == set(STACKEXCHANGE_TASKS) | {"pony"}


def query_instruction(task: str, long_documents: bool = False) -> str:
  """The per-task query instruction of docs/reference.md section 6 (exact strings); long-document
  mode uses BRIGHT's long instructions, which retrieve "documents" instead of "passages"."""
  if long_documents:
    if task not in LONG_TASKS:
      raise ValueError(f"BRIGHT task {task!r} has no long documents; those tasks are: {', '.join(LONG_TASKS)}")
    return query_instruction(task).replace("relevant passages", "relevant documents")
  if task in STACKEXCHANGE_TASKS:
    return f"Given a {task} post, retrieve relevant passages that help answer the post"
  if task == "pony":
    return f"Given a {task} question, retrieve relevant passages that help answer the question"
  if task == "leetcode":
    return "Given a coding problem, retrieve relevant examples that help answer the problem"
  if task in ("aops", "theoremqa_questions"):
    return "Given a Math problem, retrieve relevant examples that help answer the problem"
  if task == "theoremqa_theorems":
    return "Given a Math problem, retrieve relevant theorems that help answer the problem"
  raise ValueError(f"unknown BRIGHT task {task!r}; tasks are: {', '.join(TASKS)}")


def available_tasks(data_dir: str) -> list[str]:
  """The tasks that have a file under `examples/`."""
  out = []
  for task in TASKS:
    try:
      split_file(data_dir, "examples", task)
      out.append(task)
    except FileNotFoundError:
      pass
  return out


def parse_tasks(spec: str, data_dir: str | None = None, long_documents: bool = False) -> list[str]:
  """`all`, `available` (tasks present in data_dir) or a comma-separated list of task names.
  With long documents `all` means the 8 tasks that have long corpora, and others are an error."""
  valid = LONG_TASKS if long_documents else TASKS
  if spec.strip() == "all":
    return list(valid)
  if spec.strip() == "available":
    found = [t for t in (available_tasks(data_dir) if data_dir else []) if t in valid]
    if not found:
      raise ValueError(f"--tasks available: no task files under {data_dir}/examples; {LAYOUT_HELP}")
    return found
  tasks = [t.strip() for t in spec.split(",") if t.strip()]
  bad = [t for t in tasks if t not in TASKS]
  if bad or not tasks:
    raise ValueError(f"--tasks: unknown task(s) {bad or spec!r}; choose 'all', 'available' or from "
                     f"{', '.join(TASKS)}")
  no_long = [t for t in tasks if t not in valid]
  if no_long:
    raise ValueError(f"--tasks: {', '.join(no_long)} ha{'s' if len(no_long) == 1 else 've'} no long documents "
                     f"(--long-documents); tasks with long corpora: {', '.join(LONG_TASKS)}")
  return tasks


@dataclasses.dataclass
class Example:
  id: str
  query: str
  gold_ids: list[str]
  gold_ids_long: list[str]
  excluded_ids: list[str]


def split_file(data_dir: str, split: str, task: str) -> list[str]:
  """The files holding `split/task`, or a FileNotFoundError naming what was looked for."""
  base = paths.join(data_dir, split)
  for pattern in (f"{task}-*.parquet", f"{task}.parquet", f"{task}.jsonl", f"{task}-*.jsonl"):
    try:
      return paths.glob(paths.join(base, pattern))
    except FileNotFoundError:
      continue
  raise FileNotFoundError(
      f"BRIGHT data: no file for task {task!r} in {base} "
      f"(looked for {task}-*.parquet, {task}.parquet, {task}.jsonl); {LAYOUT_HELP}")


def documents_files(data_dir: str) -> list[str]:
  """The `documents/` files of every task present (seeds and HQ id joins span all 12 corpora)."""
  found = []
  for task in TASKS:
    try:
      found += split_file(data_dir, "documents", task)
    except FileNotFoundError:
      continue
  if not found:
    raise FileNotFoundError(f"BRIGHT data: no task file in {paths.join(data_dir, 'documents')}; "
                            f"{LAYOUT_HELP}")
  return found


def read_rows(files: Sequence[str]) -> list[dict]:
  """Every record of JSON-lines and parquet files, in order (paths.iter_records)."""
  return [record for path in files for _, record in paths.iter_records(path)]


def _field(row: dict, name: str, path: str):
  if name not in row:
    raise KeyError(f"{path}: row {row.get('id', '?')!r} has no field {name!r} (fields: {sorted(row)})")
  return row[name]


def _id_list(value) -> list[str]:
  """gold/excluded id lists; None, "N/A" and "" entries mean none."""
  if value is None:
    return []
  if isinstance(value, str):
    value = [value]
  return [str(v) for v in value if v is not None and str(v) not in ("N/A", "")]


def load_examples(data_dir: str, task: str, split: str = "examples") -> list[Example]:
  files = split_file(data_dir, split, task)
  out = []
  for row in read_rows(files):
    where = files[0]
    out.append(Example(
        id=str(_field(row, "id", where)),
        query=str(_field(row, "query", where)),
        gold_ids=_id_list(_field(row, "gold_ids", where)),
        gold_ids_long=_id_list(row.get("gold_ids_long")),
        excluded_ids=_id_list(row.get("excluded_ids")),
    ))
  return out


def load_documents(data_dir: str, task: str, long_documents: bool = False) -> tuple[list[str], list[str]]:
  """(ids, contents) of the task's corpus, in file order."""
  split = "long_documents" if long_documents else "documents"
  files = split_file(data_dir, split, task)
  ids, contents = [], []
  for row in read_rows(files):
    ids.append(str(_field(row, "id", files[0])))
    contents.append(str(_field(row, "content", files[0])))
  if len(set(ids)) != len(ids):
    raise ValueError(f"{files[0]}: duplicate document ids")
  return ids, contents


def read_query_file(path: str, task: str) -> dict[str, str]:
  """Queries from `--queries FILE`: a directory holding `<task>.jsonl`, a path with `{task}`,
  or one JSON lines file (rows `{"id", "query"}`, optionally `"task"` to hold several tasks)."""
  if "{task}" in path:
    path = path.format(task=task)
  elif paths.isdir(path):
    path = paths.join(path, f"{task}.jsonl")
  if not paths.isfile(path):
    raise FileNotFoundError(f"--queries: file {path} not found (JSON lines of id, query)")
  out = {}
  for row in read_rows([path]):
    if "id" not in row or "query" not in row:
      raise KeyError(f"--queries {path}: every row needs 'id' and 'query' (got {sorted(row)})")
    if row.get("task", task) == task:
      out[str(row["id"])] = str(row["query"])
  return out


def load_queries(data_dir: str, task: str, queries: str = "original") -> list[Example]:
  """The task's examples with the query text chosen by `--queries` (original|gpt4_reason|FILE);
  gold and excluded ids always come from `examples/`."""
  examples = load_examples(data_dir, task)
  if queries == "original":
    return examples
  if queries == "gpt4_reason":
    source = {e.id: e.query for e in load_examples(data_dir, task, split="gpt4_reason")}
    where = f"{data_dir}/gpt4_reason ({task})"
  else:
    source = read_query_file(queries, task)
    where = queries
  missing = [e.id for e in examples if e.id not in source]
  if missing:
    raise KeyError(f"--queries {where}: no query for {len(missing)} example id(s) of {task}, "
                   f"e.g. {missing[:3]}")
  return [dataclasses.replace(e, query=source[e.id]) for e in examples]


def qrels_for(examples: Sequence[Example], long_documents: bool = False) -> dict[str, dict[str, int]]:
  """Binary relevance from gold_ids (gold_ids_long with long documents)."""
  return {e.id: {d: 1 for d in (e.gold_ids_long if long_documents else e.gold_ids)} for e in examples}


def write_text(path: str, text: str) -> None:
  """Writes an output file whole (local: atomically), making its folder; `path` may be remote."""
  parent = path.rsplit("/", 1)[0] if paths.is_remote(path) else os.path.dirname(os.path.abspath(path))
  paths.makedirs(parent)
  paths.write_text(path, text)


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
