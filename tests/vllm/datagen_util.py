"""Shared by the real-vLLM data_gen tests: their inputs, and the exactly-once check of a run that
was stopped mid-way and restarted. The tiny model's answers are gibberish, so most inputs are
rejected: the checks are about accounting (every input once, as a row or a reject), never
content."""
import json
import os

import pytest

from data_gen.runner import Generation, run_pipeline
from reasonir_jax.data.reader import read_rows
from reasonir_jax.llm.types import SamplingParams

LONG = "d7"  # an input far over the model's context: rejected without being generated
LONG_WORDS = 2500
N_INPUTS = 12
BATCH = 2


def write_docs(path, n):
  """Seed documents d0..d{n-1} for hq and vl."""
  with open(path, "w") as f:
    for i in range(n):
      words = LONG_WORDS if f"d{i}" == LONG else 30
      f.write(json.dumps({"id": f"d{i}", "text": " ".join(f"topic{i}_{j}" for j in range(words))})
              + "\n")
  return str(path)


def write_rows(path, n):
  """Training rows d0..d{n-1} for negatives; the LONG row's positive is over the context."""
  with open(path, "w") as f:
    for i in range(n):
      words = LONG_WORDS if f"d{i}" == LONG else 40
      f.write(json.dumps({"row_id": f"d{i}", "source": "test",
                          "query": f"Why does process {i} need step {i + 1} first?",
                          "positives": [" ".join(f"fact{i}_{j}" for j in range(words))]}) + "\n")
  return str(path)


def ledger_path(out, name):
  return os.path.join(out, "_stage", f"{name}-shard00000of00001", "ledger.jsonl")


def committed_ids(path):
  """Input ids of the complete lines of a stage file (a torn last line is not committed)."""
  ids = []
  if not os.path.exists(path):
    return ids
  with open(path) as f:
    for line in f:
      try:
        ids.append(json.loads(line)["id"])
      except (json.JSONDecodeError, KeyError):
        pass
  return ids


def check_exactly_once(out, name, n_inputs, done_before):
  """After the restart: the first run's commits kept as they were, every input committed once,
  and the final files holding each input once, as a row or a reject. Returns (manifest,
  rejects by input id)."""
  want = sorted(f"d{i}" for i in range(n_inputs))
  done = committed_ids(ledger_path(out, name))
  assert done[:len(done_before)] == done_before  # the restart did not redo what was done
  assert sorted(done) == want  # each input once
  with open(os.path.join(out, f"{name}-shard00000of00001.manifest.json")) as f:
    manifest = json.load(f)
  rows = list(read_rows(os.path.join(out, f"{name}-shard*.tfrecord")))
  with open(os.path.join(out, manifest["rejects_file"])) as f:
    rejects = {r["input_id"]: r for r in map(json.loads, f)}
  # hq and vl rows are named PIPELINE/INPUT[/k]; negatives keeps the input row's id.
  row_inputs = [r.row_id.split("/")[1] if "/" in r.row_id else r.row_id for r in rows]
  assert len(row_inputs) == len(set(row_inputs)) == manifest["rows"]
  assert not set(row_inputs) & set(rejects)
  assert sorted([*row_inputs, *rejects]) == want
  assert manifest["inputs"] == n_inputs
  assert manifest["inputs_accepted"] + manifest["inputs_rejected"] == n_inputs
  return manifest, rejects


class Crash(Exception):
  """Raised from inside a run to stop it mid-way."""


def crashed_then_resumed(make_pipeline, items, out, crash_after=2):
  """Runs `make_pipeline()`'s pipeline in this process until its `crash_after`+1-th batch raises,
  then a fresh pipeline on the same backend to the end; returns check_exactly_once's result.
  The stop is an exception, not a SIGKILL, so that the module's engine survives for the
  restart (a SIGKILLed data_gen process takes its in-process engine with it:
  test_vllm_datagen.py does that, at the price of an engine start per run)."""
  pipeline = make_pipeline()
  process, calls = pipeline.process, []

  def crashing(batch):
    calls.append(len(batch))
    if len(calls) > crash_after:
      raise Crash(f"stopped at batch {len(calls)}")
    return process(batch)

  pipeline.process = crashing
  with pytest.raises(Crash):
    run_pipeline(pipeline, items, out, batch_size=BATCH)
  done_before = committed_ids(ledger_path(out, pipeline.name))
  assert BATCH <= len(done_before) < len(items)
  assert not os.path.exists(os.path.join(out, f"{pipeline.name}-shard00000of00001.manifest.json"))
  run_pipeline(make_pipeline(), items, out, batch_size=BATCH)
  return check_exactly_once(out, pipeline.name, len(items), done_before)


def generation(backend):
  """The LLM side of an in-process run: short answers, one try each."""
  return Generation(backend=backend, sampling=SamplingParams(max_tokens=24, seed=0),
                    max_attempts=1)


def vl_pipeline(backend):
  """vl with wide length buckets and short positives, so that an answer that keeps to the schema
  can become a row."""
  from data_gen.pipelines.vl import VLPipeline
  return VLPipeline(generation(backend), buckets=((1, 100), (2, 200)), positive_words=(1, 400))


def negatives_pipeline(backend):
  from data_gen.pipelines.negatives import NegativesPipeline
  return NegativesPipeline(generation(backend), min_words=1, max_words=400, max_overlap=1.0)


def check_vl(manifest, rejects):
  for reject in rejects.values():  # every reject says which of the two steps failed
    assert reject["step"] in ("query", "positive"), reject
  assert set(manifest["steps"]) <= {"query", "positive"}
  assert manifest["settings"]["buckets"] == [[1, 100], [2, 200]]


def check_negatives(out, manifest, rejects, backend_name):
  assert rejects[LONG]["step"] == "analysis"  # the first turn already does not fit
  for row in read_rows(os.path.join(out, "negatives-shard*.tfrecord")):
    assert len(row.negatives) == 1 and row.negatives[0].strip()  # the written one replaces none
    assert json.loads(row.metadata)["hard_negative"]["backend"] == backend_name
  # The second turn continues the first: every input past the analysis was asked for the document.
  steps = manifest["steps"]
  negative = steps.get("negative", {})
  assert steps["analysis"]["accepted"] == negative.get("accepted", 0) + negative.get("rejected", 0)


def check_long_input_rejected(rejects, backend_name):
  if backend_name == "openai":  # the server refuses it (HTTP 400): the client counts no tokens
    assert "400" in rejects[LONG]["reason"] or "400" in json.dumps(rejects[LONG]["attempts"]), \
        rejects[LONG]
  else:  # the in-process backends count its tokens and never send it
    assert rejects[LONG]["kind"] == "prompt_too_long", rejects[LONG]
