"""The `judge` stage end to end (CLI -> scripted OpenAI-compatible server -> TFRecords): scores map
to row weights, bad answers are retried or rejected, and --prompt-file replaces the wording."""
import json
import os
import re

import pytest

from data_gen.cli import main
from data_gen.pipelines.judge import JudgePipeline, parse_score, score_to_weight
from data_gen.parsing import AnswerError
from data_gen.testing import ScriptedChatServer
from reasonir_jax.data.reader import read_rows


def _rows(tmp_path, n=4):
  path = tmp_path / "rows.jsonl"
  records = [{"row_id": f"r{i}", "source": "hq", "query": f"RID=r{i} why do leaves need light?",
              "positives": ["Photosynthesis converts light into chemical energy."],
              "query_instruction": "Given a biology post, retrieve relevant passages",
              "metadata": json.dumps({"generator": "g0"})} for i in range(n)]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _judged(out):
  return {r.row_id: r for r in read_rows(os.path.join(out, "judge-shard*.tfrecord"))}


def test_score_parsing_and_weight_map():
  assert parse_score({"reasoning": "needs the light reactions", "score": 4}) == (4, "needs the light reactions")
  assert parse_score({"reasoning": "x", "score": 5.0})[0] == 5
  for obj, match in (({"reasoning": "x", "score": 6}, "outside 1..5"), ({"reasoning": "x", "score": "4"},
                     "whole number"), ({"reasoning": "x", "score": 2.5}, "whole number"),
                     ({"reasoning": "", "score": 3}, "reasoning is empty"), ({"score": 3}, "missing key")):
    with pytest.raises(AnswerError, match=match):
      parse_score(obj)
  assert [score_to_weight(s, 0.2, 1.0) for s in range(1, 6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
  assert score_to_weight(3, 0.0, 2.0) == 1.0


def test_judge_end_to_end(tmp_path):
  inp, out = _rows(tmp_path), str(tmp_path / "out")
  scores = {"r0": 5, "r1": 1, "r2": 3}

  def respond(req):
    rid = re.search(r"RID=(\w+)", req["messages"][1]["content"]).group(1)
    if rid == "r3":  # never a valid score: rejected after the retries
      return json.dumps({"reasoning": "unsure", "score": 9})
    if rid == "r2" and len(req["messages"]) == 2:  # first answer is not JSON: retried
      return "I would say three."
    return json.dumps({"reasoning": f"grade for {rid}", "score": scores[rid]})

  with ScriptedChatServer(respond) as server:
    rc = main(["judge", "--input", inp, "--output-dir", out, "--backend", "openai", "--base-url",
               server.base_url, "--backend-model", "m", "--log-level", "WARNING"])
    first = server.requests[0]
  assert rc == 0
  rows = _judged(out)
  assert {k: r.weight for k, r in rows.items()} == pytest.approx({"r0": 1.0, "r1": 0.2, "r2": 0.6})
  meta = json.loads(rows["r0"].metadata)
  assert meta["generator"] == "g0" and meta["judge"]["score"] == 5 and meta["judge"]["prompt"] == ["judge_score_v1"]
  assert "Given a biology post" in first["messages"][1]["content"]
  assert "Photosynthesis converts light" in first["messages"][1]["content"]
  [manifest] = [p for p in os.listdir(out) if p.endswith(".manifest.json")]
  manifest = json.load(open(os.path.join(out, manifest)))
  assert manifest["steps"]["judge"]["rejected"] == 1
  rejects = [json.loads(line) for line in open(os.path.join(out, manifest["rejects_file"]))]
  assert [r["input_id"] for r in rejects] == ["r3"] and "outside 1..5" in rejects[0]["reason"]


def test_judge_prompt_file_and_weight_flags(tmp_path, capsys):
  inp, out = _rows(tmp_path, 1), str(tmp_path / "out")
  prompt = tmp_path / "judge.toml"
  prompt.write_text('user = """Rate {query} against {positive}. JSON with reasoning and score."""\n')

  with ScriptedChatServer(lambda req: json.dumps({"reasoning": "fine", "score": 2})) as server:
    rc = main(["judge", "--input", inp, "--output-dir", out, "--backend", "openai", "--base-url",
               server.base_url, "--backend-model", "m", "--prompt-file", str(prompt), "--min-weight", "0",
               "--max-weight", "2", "--log-level", "WARNING"])
    sent = server.requests[0]["messages"][1]["content"]
  assert rc == 0 and sent.startswith("Rate RID=r0 why do leaves need light? against Photosynthesis")
  row = _judged(out)["r0"]
  assert row.weight == 0.5 and "prompt_fingerprint" in json.loads(row.metadata)["judge"]
  prompt.write_text('user = "Rate {query} only."\n')  # the positive is required
  assert main(["judge", "--input", inp, "--output-dir", str(tmp_path / "o2"), "--backend", "openai",
               "--base-url", "http://127.0.0.1:9/v1", "--backend-model", "m", "--prompt-file", str(prompt)]) != 0
  assert "judge prompt field 'user' lacks required placeholder(s) ['positive']" in capsys.readouterr().err


def test_bad_weight_flags_are_refused():
  for lo, hi, match in ((-1.0, 1.0, "--min-weight -1.0"), (0.5, 0.2, "--max-weight 0.2 is below"),
                        (0.0, float("inf"), "--max-weight inf")):
    with pytest.raises(ValueError, match=match):
      JudgePipeline(gen=None, min_weight=lo, max_weight=hi)
