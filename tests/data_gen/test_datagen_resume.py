"""Resume after a crash: a run killed with SIGKILL mid-way, and a crash injected between the rows
and the ledger write, both restart to exactly-once output (no duplicate, none lost)."""
import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_gen.cli import main
from data_gen.stage import Stage
from data_gen.testing import ScriptedChatServer
from reasonir_jax.data.reader import read_rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _docs(path, n):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": f"d{i}", "text": f"ID=d{i} " + " ".join(
          f"topic{i}_{j}" for j in range(30))}) + "\n")
  return str(path)


def _responder(delay_s=0.0):
  def respond(req):
    doc = req["messages"][1]["content"].split("ID=")[1].split()[0]
    answer = json.dumps({"hard_query": [f"Scenario about {doc}: why would a system fail here?"]})
    return ("sleep", delay_s, answer) if delay_s else answer
  return respond


def _args(inp, out, url, *extra):
  return ["hq", "--input", inp, "--output-dir", out, "--backend", "openai", "--base-url", url,
          "--model", "m", "--queries-per-doc", "1", "--min-doc-words", "5", "--batch-size", "2",
          "--log-level", "WARNING", *extra]


def killed_mid_run(args, ledger, n, min_done=4):
  """Runs `python -m data_gen ARGS`, SIGKILLs it once `ledger` holds `min_done` entries, and
  returns how many it holds (checked to be fewer than the `n` inputs)."""
  proc = subprocess.Popen([sys.executable, "-m", "data_gen", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while time.time() < deadline:
    if os.path.exists(ledger) and sum(1 for _ in open(ledger)) >= min_done:
      break
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done_before = sum(1 for _ in open(ledger))
  assert min_done <= done_before < n, "the run should be killed mid-way"
  return done_before


def _row_ids(out):
  return [r.row_id for r in read_rows(os.path.join(out, "hq-shard*.tfrecord"))]


def test_sigkill_mid_run_then_restart_is_exactly_once(tmp_path):
  n = 12
  inp = _docs(tmp_path / "docs.jsonl", n)
  out = str(tmp_path / "out")
  ledger = os.path.join(out, "_stage", "hq-shard00000of00001", "ledger.jsonl")
  with ScriptedChatServer(_responder(delay_s=0.05)) as server:
    done_before = killed_mid_run(_args(inp, out, server.base_url, "--max-concurrency", "1"),
                                 ledger, n)
    assert not os.path.exists(os.path.join(out, "hq-shard00000of00001.manifest.json"))
    # A torn write at the moment of the kill: partial trailing lines in the stage files.
    stage_dir = os.path.dirname(ledger)
    with open(os.path.join(stage_dir, "rows.jsonl"), "a") as f:
      f.write('{"input_id": "d11", "batch": "x", "row": {"row_id": "hq/d11/0"')
    with open(ledger, "a") as f:
      f.write('{"id": "d11", "bat')
    seen_before = len(server.requests)
    assert main(_args(inp, out, server.base_url)) == 0
    asked_again = collections.Counter(
        r["messages"][1]["content"].split("ID=")[1].split()[0]
        for r in server.requests[seen_before:])
  ids = _row_ids(out)
  assert sorted(ids) == sorted(f"hq/d{i}/0" for i in range(n))  # exactly once
  assert sum(asked_again.values()) == n - done_before  # finished inputs were not redone
  with open(os.path.join(out, "hq-shard00000of00001.manifest.json")) as f:
    manifest = json.load(f)
  assert (manifest["inputs"], manifest["rows"]) == (n, n)


def test_crash_between_rows_and_ledger_is_redone_once(tmp_path, monkeypatch):
  n = 6
  inp = _docs(tmp_path / "docs.jsonl", n)
  out = str(tmp_path / "out")
  real_append = Stage._append
  calls = {"n": 0}

  def crashing_append(path, records):
    real_append(path, records)
    if path.endswith("rows.jsonl"):
      calls["n"] += 1
      if calls["n"] == 2:  # the second batch's rows are durable, its ledger entries are not
        raise KeyboardInterrupt("injected crash")

  with ScriptedChatServer(_responder()) as server:
    monkeypatch.setattr(Stage, "_append", staticmethod(crashing_append))
    with pytest.raises(KeyboardInterrupt):
      main(_args(inp, out, server.base_url))
    monkeypatch.setattr(Stage, "_append", staticmethod(real_append))
    assert main(_args(inp, out, server.base_url)) == 0
  stage = Stage(os.path.join(out, "_stage", "hq-shard00000of00001"))
  with open(stage.rows_path) as f:
    assert sum(1 for _ in f) == n + 2  # the orphaned batch's rows stay on disk...
  ids = _row_ids(out)
  assert sorted(ids) == sorted(f"hq/d{i}/0" for i in range(n))  # ...but are not output twice
  # A restart with different settings is refused, naming the setting.
  assert main(_args(inp, out, "http://127.0.0.1:9/v1", "--temperature", "0.7")) == 2


def test_shards_split_inputs_disjointly_and_stably(tmp_path):
  from data_gen.inputs import select_shard
  ids = [f"x{i}" for i in range(200)]
  parts = [select_shard(ids, str, s, 4) for s in range(4)]
  assert sorted(sum(parts, [])) == sorted(ids)
  assert all(20 < len(p) < 80 for p in parts)
  assert select_shard(list(reversed(ids)), str, 1, 4) == list(reversed(parts[1]))
  with pytest.raises(ValueError, match="--shard-index"):
    select_shard(ids, str, 4, 4)
  # Two shard machines write disjoint outputs that together cover the input once.
  inp = _docs(tmp_path / "docs.jsonl", 10)
  out = str(tmp_path / "out")
  with ScriptedChatServer(_responder()) as server:
    for s in range(2):
      assert main(_args(inp, out, server.base_url, "--shard-index", str(s), "--num-shards",
                        "2", "--output-shards", "2")) == 0
  ids = _row_ids(out)
  assert sorted(ids) == sorted(f"hq/d{i}/0" for i in range(10))
  assert len([p for p in os.listdir(out) if p.endswith(".tfrecord")]) == 4


def test_rows_with_empty_texts_are_refused_and_nothing_is_lost(tmp_path):
  """A pipeline row with an empty text is refused at commit (nothing of its batch written, the
  inputs stay to do); a stage holding such a row from before is refused at the final write,
  naming the file, line and field, and no output file appears."""
  import dataclasses
  from data_gen.runner import Pipeline, run_pipeline
  from data_gen.stage import Outcome
  from reasonir_jax.data.schema import TrainingRow

  class Echo(Pipeline):
    name = "echo"

    def __init__(self, bad):
      self.bad = bad

    def input_id(self, item):
      return item

    def process(self, batch):
      return [Outcome(input_id=i, rows=[TrainingRow(
          row_id=f"echo/{i}", source="echo", query=f"query {i}", positives=[f"positive {i}"],
          negatives=[" " if i in self.bad else f"negative {i}"])]) for i in batch]

  out = str(tmp_path / "out")
  items = [f"i{k}" for k in range(4)]
  with pytest.raises(ValueError, match=r"rows.jsonl \(batch not written, its inputs stay to do\): "
                                       r"row 0 \(input 'i2'\): .*empty negatives\[0\]"):
    run_pipeline(Echo({"i2"}), items, out, batch_size=2)
  stage = Stage(os.path.join(out, "_stage", "echo-shard00000of00001"))
  assert sorted(stage.done_ids) == ["i0", "i1"]  # the first batch is kept, the second is to do
  assert not [f for f in os.listdir(out) if f.endswith(".tfrecord")]
  manifest = run_pipeline(Echo(set()), items, out, batch_size=2)
  assert manifest["rows"] == 4 and sorted(_row_ids_of(out, "echo")) == [f"echo/{i}" for i in items]

  # A stage written before rows were checked: the bad row is named by file and line.
  stage = Stage(str(tmp_path / "old"))
  row = dataclasses.asdict(TrainingRow(row_id="r", source="s", query="q", positives=["p"],
                                       negatives=["n", ""]))
  stage._append(stage.rows_path, [{"input_id": "x", "batch": "b", "row": row}])
  stage._append(stage.ledger_path, [{"id": "x", "batch": "b", "status": "ok", "rows": 1,
                                     "steps": {}}])
  with pytest.raises(ValueError, match=r"old/rows.jsonl:1 \(input 'x'\): .*empty negatives\[1\]"):
    list(Stage(str(tmp_path / "old")).committed_rows())


def _row_ids_of(out, name):
  return [r.row_id for r in read_rows(os.path.join(out, f"{name}-shard*.tfrecord"))]
