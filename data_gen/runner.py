"""Runs a pipeline over one shard of its inputs: batches -> resumable stage -> final TFRecords,
rejects file and manifest (all written atomically) in the output directory.

Output of shard i of N for a run named NAME (default: the pipeline name), in OUTPUT_DIR:
  NAME-shardIIIIIofNNNNN-XXXXX-of-YYYYY.tfrecord   the rows (Y = --output-shards files)
  NAME-shardIIIIIofNNNNN.rejects.jsonl             inputs that failed, with attempts and reasons
  NAME-shardIIIIIofNNNNN.manifest.json             counts, settings, files
  _stage/NAME-shardIIIIIofNNNNN/                   the resumable work files (kept for audits)

OUTPUT_DIR may be remote (gs://): the shard then runs in a local mirror of it and is uploaded
when done (`_run_to_remote`).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import time
from typing import Any, Sequence

from tqdm import tqdm

from data_gen.inputs import select_shard
from data_gen import safety
from data_gen.stage import Outcome, Stage, write_jsonl_atomic, write_text_atomic
from reasonir_jax import paths
from reasonir_jax.llm.types import ChatBackend, SamplingParams, StreamingChatBackend

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Generation:
  """The LLM side shared by the generating pipelines."""
  backend: ChatBackend
  sampling: SamplingParams
  max_attempts: int = 3

  def metadata(self, prompt: str | list[str], **extra) -> dict:
    return {"generator": self.backend.model, "backend": self.backend.name, "prompt": prompt,
            "sampling": self.sampling.to_dict(), **extra}

  def settings(self) -> dict:
    return {"generator": self.backend.model, "sampling": self.sampling.to_dict(),
            "max_attempts": self.max_attempts}


class Pipeline(abc.ABC):
  name: str = "pipeline"

  @property
  def concurrent_batches(self) -> bool:
    """Whether several batches may be processed at once (threads): true for LLM pipelines on
    a streaming backend, so one batch's slow tail overlaps the next batch's requests."""
    gen = getattr(self, "gen", None)
    return gen is not None and isinstance(gen.backend, StreamingChatBackend)

  @abc.abstractmethod
  def input_id(self, item) -> str:
    """The stable id of an input (sharding and the ledger key on it)."""

  @abc.abstractmethod
  def process(self, batch: list) -> list[Outcome]:
    """One Outcome per input of the batch, in any order."""

  def settings(self) -> dict[str, Any]:
    """What determines the output; a restart with different settings is refused."""
    return {}


def shard_name(name: str, shard_index: int, num_shards: int) -> str:
  return f"{name}-shard{shard_index:05d}of{num_shards:05d}"


def _check_settings(stage_dir: str, settings: dict) -> None:
  path = os.path.join(stage_dir, "settings.json")
  settings = json.loads(json.dumps(settings))  # normalize tuples etc.
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
      raise ValueError(
          f"{stage_dir} was started with different settings ({', '.join(changed)}); "
          "resume with the same flags, or use another --output-dir or --name")
  else:
    write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


def _backend_retries(pipeline: Pipeline) -> int | None:
  """HTTP-level retries of the `openai` backend in this run (others do not retry)."""
  gen = getattr(pipeline, "gen", None)
  return getattr(gen.backend, "num_retries", None) if gen is not None else None


def run_pipeline(pipeline: Pipeline, items: Sequence, output_dir: str, *, shard_index: int = 0,
                 num_shards: int = 1, batch_size: int = 64, output_shards: int = 1,
                 name: str | None = None, extra_manifest: dict | None = None,
                 batches_in_flight: int = 2, break_lock: bool = False) -> dict:
  """Processes this shard's inputs not yet in the ledger, then writes the final files.
  Returns the manifest."""
  if batch_size < 1:
    raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
  if output_shards < 1:
    raise ValueError(f"--output-shards must be >= 1, got {output_shards}")
  if batches_in_flight < 1:
    raise ValueError(f"--batches-in-flight must be >= 1, got {batches_in_flight}")
  if paths.is_remote(output_dir):
    return _run_to_remote(pipeline, items, output_dir, shard_index=shard_index,
                          num_shards=num_shards, batch_size=batch_size,
                          output_shards=output_shards, name=name,
                          extra_manifest=extra_manifest, batches_in_flight=batches_in_flight,
                          break_lock=break_lock)
  started = time.time()
  base = shard_name(name or pipeline.name, shard_index, num_shards)
  safety.check_shard_count(output_dir, name or pipeline.name, num_shards)
  stage_dir = os.path.join(output_dir, "_stage", base)
  os.makedirs(stage_dir, exist_ok=True)
  with safety.StageLock(stage_dir, break_lock=break_lock):
    return _run_locked(pipeline, items, output_dir, base, stage_dir, started,
                       shard_index=shard_index, num_shards=num_shards, batch_size=batch_size,
                       output_shards=output_shards, name=name, extra_manifest=extra_manifest,
                       batches_in_flight=batches_in_flight)


def _run_to_remote(pipeline: Pipeline, items: Sequence, output_dir: str, *, shard_index: int,
                   num_shards: int, name: str | None, **kwargs) -> dict:
  """An object store can neither append nor rename, which the stage's commits need: the shard
  runs in a local mirror of `output_dir` (paths.local_mirror; a rerun on this machine, after a
  kill too, resumes there), then its TFRecords, rejects and stage are uploaded, the manifest
  last, so a manifest in the bucket means a complete shard. A shard whose stage is already in
  the bucket (finished on another machine) starts from that stage; one killed on another
  machine starts over."""
  name = name or pipeline.name
  base = shard_name(name, shard_index, num_shards)
  safety.check_shard_count(output_dir, name, num_shards)  # other machines' shards are here
  local = paths.local_mirror(output_dir, "data_gen")
  local_stage = os.path.join(local, "_stage", base)
  fs, root = paths.filesystem(output_dir)
  root = root.rstrip("/")
  remote_stage = f"{root}/_stage/{base}"
  if not os.path.isdir(local_stage) and fs.exists(f"{remote_stage}/ledger.jsonl"):
    os.makedirs(local_stage)
    for path in fs.ls(remote_stage, detail=False):
      fs.get(path, os.path.join(local_stage, os.path.basename(path)))
  log.info("%s: output %s, staged locally in %s", base, output_dir, local)
  manifest = run_pipeline(pipeline, items, local, shard_index=shard_index,
                          num_shards=num_shards, name=name, **kwargs)
  for f in [*manifest["files"], manifest["rejects_file"]]:
    fs.put(os.path.join(local, f), f"{root}/{f}")
  for f in sorted(os.listdir(local_stage)):
    if f != safety.LOCK_FILE:
      fs.put(os.path.join(local_stage, f), f"{remote_stage}/{f}")
  fs.put(os.path.join(local, f"{base}.manifest.json"), f"{root}/{base}.manifest.json")
  print(f"{base}: uploaded to {output_dir}")
  return manifest


def _process_checked(pipeline: Pipeline, batch: list) -> list[Outcome]:
  outcomes = pipeline.process(batch)
  got = sorted(o.input_id for o in outcomes)
  want = sorted(pipeline.input_id(it) for it in batch)
  if got != want:
    raise RuntimeError(f"{pipeline.name}.process returned outcomes for {got[:5]}..., "
                       f"expected {want[:5]}...")
  return outcomes


def _processed_batches(pipeline: Pipeline, batches: list[list], in_flight: int):
  """Yields each batch's outcomes; with in_flight > 1 (and a pipeline that allows it) several
  batches run at once and are yielded as they finish. Committing stays on the caller's
  thread, one batch at a time, so the ledger's exactly-once rule is unchanged."""
  if in_flight == 1 or not pipeline.concurrent_batches:
    for batch in batches:
      yield batch, _process_checked(pipeline, batch)
    return
  with concurrent.futures.ThreadPoolExecutor(in_flight, thread_name_prefix="batch") as pool:
    queue = iter(batches)
    pending = {}
    for batch in itertools.islice(queue, in_flight):
      pending[pool.submit(_process_checked, pipeline, batch)] = batch
    while pending:
      done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        batch = pending.pop(future)
        for nxt in itertools.islice(queue, 1):
          pending[pool.submit(_process_checked, pipeline, nxt)] = nxt
        yield batch, future.result()


def _run_locked(pipeline, items, output_dir, base, stage_dir, started, *, shard_index,
                num_shards, batch_size, output_shards, name, extra_manifest,
                batches_in_flight) -> dict:
  from reasonir_jax.data.writer import write_rows
  mine = select_shard(items, pipeline.input_id, shard_index, num_shards)
  _check_settings(stage_dir, {"pipeline": pipeline.name, **pipeline.settings()})
  stage = Stage(stage_dir)
  todo = [it for it in mine if pipeline.input_id(it) not in stage.ledger]
  log.info("%s: %d inputs in shard %d/%d, %d already done, %d to do", base, len(mine),
           shard_index, num_shards, len(mine) - len(todo), len(todo))
  rejected = sum(e["status"] == "rejected" for e in stage.ledger.values())
  with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=base, unit="input",
            dynamic_ncols=True) as bar:
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    for batch, outcomes in _processed_batches(pipeline, batches, batches_in_flight):
      stage.commit(outcomes)
      bar.update(len(batch))
      rejected += sum(o.reject is not None for o in outcomes)
      bar.set_postfix(rejected=rejected)

  mine_ids = {pipeline.input_id(it) for it in mine}
  stale = set(stage.ledger) - mine_ids
  if stale:
    log.warning("%s: ledger has %d ids that are not in this shard's input (ignored), e.g. %s",
                base, len(stale), sorted(stale)[:3])
  rows = [r for src, r in stage.committed_rows() if src in mine_ids]
  paths = write_rows(rows, output_dir, base, output_shards)
  rejects = [r for r in stage.committed_rejects() if r["input_id"] in mine_ids]
  rejects_path = os.path.join(output_dir, f"{base}.rejects.jsonl")
  write_jsonl_atomic(rejects_path, rejects)
  entries = [stage.ledger[i] for i in sorted(mine_ids)]
  manifest = {
      "pipeline": pipeline.name,
      "name": name or pipeline.name,
      "shard_index": shard_index,
      "num_shards": num_shards,
      "inputs": len(mine),
      "inputs_accepted": sum(e["status"] == "ok" for e in entries),
      "inputs_rejected": sum(e["status"] == "rejected" for e in entries),
      "rows": len(rows),
      "reject_kinds": dict(sorted(collections.Counter(
          r.get("kind", "other") for r in rejects).items())),
      "stage_dir": os.path.relpath(stage_dir, output_dir),
      "steps": stage.step_counts(mine_ids),
      "settings": pipeline.settings(),
      "backend_retries_this_run": _backend_retries(pipeline),
      "files": [os.path.basename(p) for p in paths],
      "rejects_file": os.path.basename(rejects_path),
      "elapsed_s_this_run": round(time.time() - started, 3),
      **(extra_manifest or {}),
  }
  manifest_path = os.path.join(output_dir, f"{base}.manifest.json")
  write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
  print(f"{base}: {manifest['inputs']} inputs, {manifest['inputs_accepted']} accepted, "
        f"{manifest['inputs_rejected']} rejected, {manifest['rows']} rows -> {output_dir}")
  for step, c in manifest["steps"].items():
    print(f"  step {step}: accepted {c['accepted']}, rejected {c['rejected']}, "
          f"retried {c['retried']}")
  return manifest

