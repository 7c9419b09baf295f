"""data_gen on a local Ray instance (2 CPUs) against the loopback OpenAI-compatible server:
streaming input, a worker killed mid-run, resume, and exactly-once output."""
import json
import os
import shutil

import pytest

ray = pytest.importorskip("ray")

from data_gen.ray_engine import run_on_ray  # noqa: E402
from data_gen.testing import ScriptedChatServer, last_user_message  # noqa: E402
from reasonir_jax.data.reader import read_rows  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}})
  yield
  ray.shutdown()


def _answer(req):
  text = last_user_message(req)
  if "TAG=d7 " in text:
    return "no json"  # always rejected
  return json.dumps({"hard_query": ["How should an engineer reason about this failure mode?"]})


def _factory(base_url, kill_marker, built_log=None):
  def make():
    if built_log:
      with open(built_log, "a") as f:
        f.write(f"{os.getpid()}\n")
    from reasonir_jax.llm.backends import make_backend
    from reasonir_jax.llm.types import SamplingParams
    from data_gen.pipelines.hq import HQPipeline
    from data_gen.runner import Generation

    class KilledOnce(HQPipeline):
      def process(self, batch):
        if any(d["id"] == "d5" for d in batch):
          try:
            os.remove(kill_marker)  # only the first worker to get here dies
          except FileNotFoundError:
            pass
          else:
            os._exit(1)  # the worker process dies mid-batch, before its commit
        return super().process(batch)

    gen = Generation(make_backend("openai", base_url=base_url, model="m", max_concurrency=8),
                     SamplingParams(), max_attempts=1)
    return KilledOnce(gen, queries_per_doc=1, min_query_words=5)
  return make


@pytest.mark.slow
def test_ray_run_survives_a_killed_worker_exactly_once(local_ray, tmp_path):
  inputs = []
  for f in range(2):  # two files, read in blocks by Ray
    path = tmp_path / f"docs{f}.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"TAG=d{i} some seed text"}) + "\n"
                            for i in range(f * 10, f * 10 + 10)))
    inputs.append(str(path))
  marker = tmp_path / "kill-once"
  marker.write_text("")
  out = tmp_path / "out"
  with ScriptedChatServer(_answer) as server:
    manifest = run_on_ray(_factory(server.base_url, str(marker)), inputs, str(out), name="hq",
                          batch_size=4)
    assert not marker.exists()  # the worker really was killed once
    rows = list(read_rows(str(out / "hq-shard*.tfrecord")))
    want = sorted(f"hq/d{i}/0" for i in range(20) if i != 7)
    assert sorted(r.row_id for r in rows) == want  # nothing lost, nothing duplicated
    assert manifest["inputs"] == 20 and manifest["inputs_rejected"] == 1
    # A task that committed and then died is rerun and commits again: the merge keeps one.
    parts = sorted((out / "_ray" / "hq" / "parts").glob("part-*.jsonl"))
    shutil.copy(parts[0], parts[0].with_name("part-zzzz-rerun.jsonl"))
    asked = len(server.requests)
    built = tmp_path / "built.log"
    again = run_on_ray(_factory(server.base_url, str(marker), str(built)), inputs, str(out),
                       name="hq", batch_size=4)
    assert len(server.requests) == asked and again["processed_this_run"] == 0  # resumed
    assert not built.exists()  # nothing left to do: no worker built a pipeline (or engine)
    assert again["duplicate_commits_dropped"] > 0
    assert sorted(r.row_id for r in read_rows(str(out / "hq-shard*.tfrecord"))) == want
  from data_gen.cli import main
  assert main(["coverage", "--input", ",".join(inputs), "--output-dir", str(out),
               "--name", "hq"]) == 0


def test_cli_engine_ray(local_ray, tmp_path, capsys):
  from data_gen.cli import main
  inp = tmp_path / "docs.jsonl"
  docs = [{"id": f"d{i}", "text": f"TAG=d{i} seed"} for i in range(6)]
  docs += [{"id": "short", "text": "tiny"}, {"id": "d0-copy", "text": "TAG=d0 seed"}]
  inp.write_text("".join(json.dumps(d) + "\n" for d in docs))
  out = tmp_path / "out"
  with ScriptedChatServer(_answer) as server:
    common = ["hq", "--engine", "ray", "--input", str(inp), "--output-dir", str(out),
              "--backend", "openai", "--base-url", server.base_url, "--backend-model", "m",
              "--queries-per-doc", "1", "--min-query-words", "5", "--batch-size", "2",
              "--near-dup-threshold", "0"]
    # Without --no-filter the driver runs the seed filters once (length, exact duplicates).
    assert main(common + ["--min-doc-words", "2"]) == 0
    assert "filter (driver)" in capsys.readouterr().out
    rows = list(read_rows(str(out / "hq-shard*.tfrecord")))
    assert sorted(r.row_id for r in rows) == [f"hq/d{i}/0" for i in range(6)]
    asked = len(server.requests)
    assert main(common + ["--min-doc-words", "2"]) == 0  # resume: filtered input reused
    assert len(server.requests) == asked and "filter (driver)" not in capsys.readouterr().out
    assert main(common + ["--min-doc-words", "1"]) == 2  # other filter flags: refused
    assert "filtered with other flags (min_doc_words)" in capsys.readouterr().err
    assert main(common + ["--no-filter", "--name", "raw"]) == 0
  raw = sorted(r.row_id for r in read_rows(str(out / "raw-shard*.tfrecord")))
  assert len(raw) == 8 and "hq/short/0" in raw  # --no-filter: the input as is


def test_merge_streams_rows_and_keeps_the_first_commit(tmp_path):
  """The driver's merge hands the writer a stream, not a list, and drops a second commit."""
  import types
  from data_gen.ray_engine import _merge
  from reasonir_jax.data.writer import write_rows
  parts = tmp_path / "parts"
  parts.mkdir()

  def rec(i, reject=None, query="q"):
    rows = [] if reject else [{"row_id": f"hq/d{i}/0", "source": "hq", "query": query,
                               "positives": ["p"]}]
    return json.dumps({"input_id": f"d{i}", "rows": rows, "reject": reject,
                       "steps": {"queries": {"attempts": 1, "ok": not reject}}}) + "\n"

  (parts / "part-a.jsonl").write_text(rec(0) + rec(1, {"step": "queries", "reason": "bad"}))
  (parts / "part-b.jsonl").write_text(rec(2) + rec(0, query="second commit"))
  seen = {}

  def spy(rows, *args):
    seen["lazy"] = isinstance(rows, types.GeneratorType)
    return write_rows(rows, *args)

  stage = tmp_path / "_stage" / "hq"
  stage.mkdir(parents=True)
  manifest = _merge(str(parts), str(stage), str(tmp_path), "hq-shard00000of00001", "hq", 3, 3,
                    0.0, 1, spy)
  assert seen["lazy"]
  assert (manifest["inputs"], manifest["rows"], manifest["inputs_rejected"],
          manifest["duplicate_commits_dropped"]) == (3, 2, 1, 1)
  rows = {r.row_id: r.query for r in read_rows(str(tmp_path / "hq-shard*.tfrecord"))}
  assert rows == {"hq/d0/0": "q", "hq/d2/0": "q"}  # the first commit of d0 wins
  ledger = [json.loads(line) for line in (stage / "ledger.jsonl").read_text().splitlines()]
  assert sorted((e["id"], e["status"]) for e in ledger) == [("d0", "ok"), ("d1", "rejected"),
                                                           ("d2", "ok")]
  [reject] = [json.loads(line) for line in (tmp_path / manifest["rejects_file"]).open()]
  assert reject["input_id"] == "d1" and reject["reason"] == "bad"
  assert not list(tmp_path.glob("*.tmp-*")) and not list(stage.glob("*.tmp-*"))


def test_merge_refuses_a_row_with_an_empty_text_naming_part_and_line(tmp_path):
  from data_gen.ray_engine import _merge
  from reasonir_jax.data.writer import write_rows
  parts = tmp_path / "parts"
  parts.mkdir()
  rows = [{"row_id": f"hq/d{i}/0", "source": "hq", "query": "q", "positives": ["p"],
           "negatives": ["n", "\t" if i == 1 else "m"]} for i in range(2)]
  (parts / "part-a.jsonl").write_text("".join(
      json.dumps({"input_id": f"d{i}", "rows": [r], "reject": None, "steps": {}}) + "\n"
      for i, r in enumerate(rows)))
  stage = tmp_path / "_stage" / "hq"
  stage.mkdir(parents=True)
  with pytest.raises(ValueError, match=r"part-a.jsonl:2: row 0 of input 'd1': .*negatives\[1\]"):
    _merge(str(parts), str(stage), str(tmp_path), "hq-shard00000of00001", "hq", 2, 2, 0.0, 1,
           write_rows)
  assert not list(tmp_path.glob("*.tfrecord")) and not (stage / "ledger.jsonl").exists()
  assert (parts / "part-a.jsonl").exists()  # the parts, all that was generated, are kept
