"""Multi-machine safety: the stage lock, one shard count per run, coverage over the manifests,
and exactly-once output with several batches in flight."""
import json
import os
import subprocess
import sys

import pytest

from data_gen.cli import main
from data_gen.safety import StageLock, check_shard_count
from data_gen.testing import ScriptedChatServer, last_user_message


def _docs(path, n):
  body = " ".join(f"word{i}" for i in range(60))
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": f"d{i}", "text": f"TAG=d{i} {body} unique{i} " * 2}) + "\n")
  return str(path)


def _answer(req):
  text = last_user_message(req)
  if "TAG=d3 " in text:
    return "not json"  # always rejected
  return json.dumps({"hard_query": ["How would a team reason about this tricky situation now?"]})


def _hq(server, inp, out, *extra):
  return main(["hq", "--input", inp, "--output-dir", str(out), "--backend", "openai",
               "--base-url", server.base_url, "--model", "m", "--queries-per-doc", "1",
               "--min-doc-words", "5", "--near-dup-threshold", "0", "--batch-size", "2",
               "--max-attempts", "1", *extra])


def test_stage_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock = StageLock(str(tmp_path))
    with open(lock.path, "w") as f:
      json.dump({"host": lock.owner["host"], "pid": holder.pid, "since": 0}, f)
    with pytest.raises(ValueError, match=rf"locked by host .* pid {holder.pid}.*--break-lock"):
      lock.acquire()
    with StageLock(str(tmp_path), break_lock=True):
      assert json.load(open(lock.path))["pid"] == os.getpid()
    assert not os.path.exists(lock.path)  # released
  finally:
    holder.kill()
    holder.wait()
  with open(lock.path, "w") as f:  # a dead process's lock on this host is stale
    json.dump({"host": lock.owner["host"], "pid": holder.pid, "since": 0}, f)
  with StageLock(str(tmp_path)):
    pass


def test_mixed_shard_counts_refused_and_coverage_lists_missing_ids(tmp_path, capsys):
  inp = _docs(tmp_path / "docs.jsonl", 8)
  out = tmp_path / "out"
  with ScriptedChatServer(_answer) as server:
    assert _hq(server, inp, out, "--num-shards", "2", "--shard-index", "0") == 0
    # Re-sharding into the same directory would mix two splits under one glob.
    assert _hq(server, inp, out, "--num-shards", "3", "--shard-index", "0") == 2
    assert "split into 2 shards" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not --num-shards 4"):
      check_shard_count(str(out), "hq", 4)
    # Shard 1 has not run: coverage names its ids and the missing shard, exit status 1.
    missing_out = tmp_path / "missing.txt"
    assert main(["coverage", "--input", inp, "--output-dir", str(out), "--name", "hq",
                 "--missing-out", str(missing_out)]) == 1
    missing = missing_out.read_text().split()
    assert missing and "missing shards [1]" in capsys.readouterr().out
    assert _hq(server, inp, out, "--num-shards", "2", "--shard-index", "1") == 0
  assert main(["coverage", "--input", inp, "--output-dir", str(out), "--name", "hq",
               "--missing-out", str(missing_out)]) == 0
  assert missing_out.read_text() == ""  # the rejected d3 counts as done (it is in a ledger)
  manifests = [json.load(open(out / p)) for p in os.listdir(out) if p.endswith(".manifest.json")]
  assert sum(m["reject_kinds"].get("invalid", 0) for m in manifests) == 1


def test_batches_in_flight_keep_exactly_once(tmp_path):
  from reasonir_jax.data.reader import read_rows
  inp = _docs(tmp_path / "docs.jsonl", 12)
  with ScriptedChatServer(lambda req: ("sleep", 0.05, _answer(req))) as server:
    assert _hq(server, inp, tmp_path / "o", "--batches-in-flight", "4") == 0
  rows = list(read_rows(str(tmp_path / "o" / "hq-shard*.tfrecord")))
  assert sorted(r.row_id for r in rows) == sorted(f"hq/d{i}/0" for i in range(12) if i != 3)
