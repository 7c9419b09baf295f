"""Run a data_gen pipeline on Ray Data (`pip install 'reasonir-jax[cluster]'`): Ray reads the
input files in blocks across the cluster (no machine reads the whole input), balances batches
over the workers and retries a task whose worker died. The single-machine runner
(data_gen.runner) stays the default; this is for many machines against shared storage.

Exactly-once output: a worker commits a batch by writing a part file under
`OUTPUT_DIR/_ray/NAME/parts/` to a temporary name, fsyncing it, and renaming it (atomic). A
worker killed before the rename leaves only a temporary file (ignored) and Ray reruns its task;
a worker killed after the rename but before Ray saw the task finish is rerun too and commits a
second part with the same inputs. The merge keeps the first outcome per input id (parts in name
order), so every input lands in the output exactly once. A rerun of the same command skips the
inputs already in a part (resume). The merge then writes the usual TFRecords, rejects and
manifest (`NAME-shard00000of00001.*`) and a ledger, so `python -m data_gen coverage` works. It
streams: one pass over the parts, rows straight into the TFRecord writer, so the driver holds
the ids it has seen, never the rows (bench/datagen_ray_merge.py measures its peak RSS).

Each worker builds its own pipeline (and LLM backend) from `make_pipeline`, a picklable
zero-argument callable, once per worker process.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
import uuid
from typing import Callable

from data_gen import safety
from data_gen.runner import Pipeline, _process_checked, shard_name
from data_gen.stage import atomic_writer, json_line, write_jsonl_atomic, write_text_atomic
from reasonir_jax import paths
from reasonir_jax.data.schema import TrainingRow

# Per worker process: (run id, parts dir) -> {"pipeline": built on first use, "done": id set}.
_WORKER_STATE: dict = {}


def _import_ray():
  try:
    import ray
    import ray.data  # noqa: F401
  except ImportError as e:
    raise ImportError("the Ray engine needs Ray Data: pip install 'reasonir-jax[cluster]' "
                      f"(ray[data]) ({e})") from e
  return ray


def _read_parts(parts_dir: str, where: bool = False):
  """(input_id, record) of every committed part, in part-name order; with `where`,
  (input_id, record, "path:line")."""
  for path in sorted(glob.glob(os.path.join(glob.escape(parts_dir), "part-*.jsonl"))):
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        rec = json.loads(line)
        yield (rec["input_id"], rec, f"{path}:{lineno}") if where else (rec["input_id"], rec)


def done_ids(parts_dir: str) -> set[str]:
  return {i for i, _ in _read_parts(parts_dir)}


def _items(batch: dict, kind: str) -> list:
  """A Ray batch (dict of columns) -> documents or training rows."""
  n = len(batch["id"] if kind == "documents" else batch["row_id"])
  records = [{k: _plain(v[i]) for k, v in batch.items()} for i in range(n)]
  if kind == "documents":
    docs = []
    for r in records:
      doc = {"id": str(r["id"]), "text": r.get("text") or r.get("content")}
      if r.get("domain"):
        doc["domain"] = str(r["domain"])
      docs.append(doc)
    return docs
  fields = {f.name for f in dataclasses.fields(TrainingRow)}
  return [TrainingRow(**{k: v for k, v in r.items() if k in fields and v is not None})
          for r in records]


def _plain(value):
  """numpy scalars/arrays from a Ray batch -> Python values."""
  if hasattr(value, "tolist"):
    return value.tolist()
  return value


def check_output_dir(output_dir: str) -> None:
  if paths.is_remote(output_dir):
    raise ValueError(f"--output-dir {output_dir}: --engine ray commits each part by a rename on "
                     "a filesystem all workers share, which an object store cannot do; use a "
                     "shared POSIX filesystem, or --engine local (which uploads to gs://)")


def _commit_part(parts_dir: str, outcomes) -> str:
  ids = sorted(o.input_id for o in outcomes)
  digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]
  path = os.path.join(parts_dir, f"part-{digest}-{uuid.uuid4().hex[:8]}.jsonl")
  records = [{"input_id": o.input_id, "rows": [dataclasses.asdict(r) for r in o.rows],
              "reject": o.reject, "steps": o.steps} for o in outcomes]
  write_jsonl_atomic(path, records)  # the rename is the commit
  return path


def _input_id(item, kind: str) -> str:
  """The id the pipelines key an input on (hq and vl: the document's, negatives: the row's)."""
  return item["id"] if kind == "documents" else item.row_id


def _close(pipeline: Pipeline | None) -> None:
  gen = getattr(pipeline, "gen", None)
  if gen is not None:
    gen.backend.close()


def _process_batch(batch: dict, *, make_pipeline: Callable[[], Pipeline], parts_dir: str,
                   kind: str, run_id: str) -> dict:
  import numpy as np
  # Keyed by the run, not by id(make_pipeline): a worker kept from an earlier run can see a
  # reused id() and would then skip only what was done when that run began, redoing inputs
  # committed since. An earlier run's state of the same output is dropped, its backend closed.
  key = (run_id, parts_dir)
  if key not in _WORKER_STATE:
    for old in [k for k in _WORKER_STATE if k[1] == parts_dir]:
      _close(_WORKER_STATE.pop(old)["pipeline"])
    _WORKER_STATE[key] = {"pipeline": None, "done": done_ids(parts_dir)}
  state = _WORKER_STATE[key]
  items = _items(batch, kind)
  ids = [_input_id(it, kind) for it in items]
  todo = [it for it, i in zip(items, ids) if i not in state["done"]]
  if todo:
    # Built on the first input left to do: a resumed run whose work is all committed starts
    # no LLM engine.
    if state["pipeline"] is None:
      state["pipeline"] = make_pipeline()
    _commit_part(parts_dir, _process_checked(state["pipeline"], todo))
  return {"input_id": np.array(ids, dtype=object),
          "processed": np.array([i not in state["done"] for i in ids])}


def run_on_ray(make_pipeline: Callable[[], Pipeline], input_paths: list[str], output_dir: str,
               *, name: str, kind: str = "documents", batch_size: int = 64,
               concurrency: int | None = None, task_retries: int = 3,
               output_shards: int = 1) -> dict:
  """Runs `make_pipeline()`'s pipeline over JSON-lines inputs on the current Ray cluster
  (`ray.init()` first; a local instance when none is running). Returns the manifest."""
  from reasonir_jax.data.writer import write_rows
  ray = _import_ray()
  if kind not in ("documents", "rows"):
    raise ValueError(f"run_on_ray: kind must be 'documents' or 'rows', got {kind!r}")
  check_output_dir(output_dir)
  started = time.time()
  base = shard_name(name, 0, 1)
  safety.check_shard_count(output_dir, name, 1)
  parts_dir = os.path.join(output_dir, "_ray", name, "parts")
  stage_dir = os.path.join(output_dir, "_stage", base)
  os.makedirs(parts_dir, exist_ok=True)
  os.makedirs(stage_dir, exist_ok=True)
  with safety.StageLock(stage_dir):
    ds = ray.data.read_json(input_paths, lines=True)
    ds = ds.map_batches(_process_batch, batch_size=batch_size, batch_format="numpy",
                        fn_kwargs={"make_pipeline": make_pipeline, "parts_dir": parts_dir,
                                   "kind": kind, "run_id": uuid.uuid4().hex},
                        concurrency=concurrency,
                        ray_remote_args_fn=lambda: {"max_retries": task_retries})
    seen = processed = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
      seen += len(batch["input_id"])
      processed += int(batch["processed"].sum())
    return _merge(parts_dir, stage_dir, output_dir, base, name, seen, processed, started,
                  output_shards, write_rows)


def _merge(parts_dir, stage_dir, output_dir, base, name, seen, processed, started,
           output_shards, write_rows) -> dict:
  """One streaming pass over the parts (name order): the first outcome per input id wins; its
  rows go straight to the TFRecord writer and its reject and ledger entry to their files, so
  the driver holds one part's record at a time plus the set of ids seen, never the rows."""
  kept: set[str] = set()
  counts = {"duplicates": 0, "rows": 0, "rejected": 0}
  rejects_path = os.path.join(output_dir, f"{base}.rejects.jsonl")
  with atomic_writer(rejects_path) as rejects, \
       atomic_writer(os.path.join(stage_dir, "ledger.jsonl")) as ledger:

    def rows():
      for input_id, rec, where in _read_parts(parts_dir, where=True):
        if input_id in kept:
          counts["duplicates"] += 1  # a rerun task committed this input again: keep the first
          continue
        kept.add(input_id)
        if rec["reject"]:
          counts["rejected"] += 1
          rejects.write(json_line({"input_id": input_id, **rec["reject"]}))
        ledger.write(json_line({"id": input_id, "batch": "ray",
                                "status": "rejected" if rec["reject"] else "ok",
                                "rows": len(rec["rows"]), "steps": rec["steps"]}))
        counts["rows"] += len(rec["rows"])
        for k, r in enumerate(rec["rows"]):
          try:  # e.g. an empty text: refused before any output file gets its final name
            yield TrainingRow(**r).validate()
          except ValueError as e:
            raise ValueError(f"{where}: row {k} of input {input_id!r}: {e}") from None

    paths = write_rows(rows(), output_dir, base, output_shards)
  manifest = {
      "pipeline": name, "name": name, "engine": "ray", "shard_index": 0, "num_shards": 1,
      "inputs": len(kept), "inputs_seen_this_run": seen, "processed_this_run": processed,
      "inputs_accepted": len(kept) - counts["rejected"],
      "inputs_rejected": counts["rejected"], "rows": counts["rows"],
      "duplicate_commits_dropped": counts["duplicates"],
      "files": [os.path.basename(p) for p in paths],
      "rejects_file": os.path.basename(rejects_path),
      "stage_dir": os.path.relpath(stage_dir, output_dir),
      "elapsed_s_this_run": round(time.time() - started, 3),
  }
  write_text_atomic(os.path.join(output_dir, f"{base}.manifest.json"),
                    json.dumps(manifest, indent=2, sort_keys=True))
  return manifest
