"""`--prompt-file` on `python -m data_gen hq|vl|negatives`: the file's wording reaches the server,
a run records its fingerprint (our wording keeps the settings it had), a resume with another
wording is refused, and a bad file fails before any request with the file and field named."""
import json
import os

import pytest

from data_gen import prompts, prompts_public
from data_gen.cli import main
from data_gen.testing import ScriptedChatServer


def _jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _toml(path, text):
  path.write_text(text)
  return str(path)


def _settings(out):
  """The settings a run recorded (checked on resume)."""
  [shard] = os.listdir(os.path.join(out, "_stage"))
  with open(os.path.join(out, "_stage", shard, "settings.json")) as f:
    return json.load(f)


QUERY = "How would a brewer adjust the mash temperature to favour beta amylase activity here?"


def _answer(req):
  """A valid answer for every step of every pipeline, chosen by what the request asks for."""
  text = json.dumps(req["messages"])
  if "HQ-" in text or "hard_query" in text:
    return json.dumps({"hard_query": [QUERY]})
  if "VLQ-" in text:
    return json.dumps({"query": "ten words " * 5})
  if "VLP-" in text:
    return json.dumps({"positive_document": "an explanation of heat engines and entropy"})
  if "NEGA-" in text and len(req["messages"]) == 2:
    return "The query needs the light reactions; leaves mislead."
  return json.dumps({"hard_negative_document": "Autumn foliage turns red " + "word " * 25})


def _run(argv, server):
  return main([*argv, "--backend", "openai", "--base-url", server.base_url, "--backend-model",
               "m", "--log-level", "WARNING"])


def _hq_args(tmp_path, out, *extra):
  docs = _jsonl(tmp_path / "docs.jsonl", [{"id": "d0", "text": "Starch breaks into maltose. " * 20}])
  return ["hq", "--input", docs, "--output-dir", out, "--no-filter", "--queries-per-doc", "1", *extra]


def test_hq_prompt_file_reaches_the_server_and_keys_the_run(tmp_path):
  path = _toml(tmp_path / "hq.toml", 'system = "HQ-SYS"\nuser = "HQ-{n} {document}{in_domain}"\n')
  with ScriptedChatServer(_answer) as server:
    assert _run(_hq_args(tmp_path, str(tmp_path / "ours")), server) == 0
    ours = _settings(str(tmp_path / "ours"))
    assert server.requests[-1]["messages"] == prompts.hq_queries(
        "Starch breaks into maltose. " * 20, 1, None)  # our wording, as before
    out = str(tmp_path / "file")
    assert _run(_hq_args(tmp_path, out, "--prompt-file", path, "--domain", "brewing"), server) == 0
    sent = server.requests[-1]["messages"]
  assert sent == [{"role": "system", "content": "HQ-SYS"},
                  {"role": "user", "content": "HQ-1 " + "Starch breaks into maltose. " * 20 + " in brewing"}]
  wording = prompts.HQ_PROMPTS
  assert "prompt_fingerprint" not in ours  # our wording: the settings runs had before
  from reasonir_jax.llm import prompt_file
  fingerprint = prompt_file.load(wording, path).fingerprint
  assert _settings(out)["prompt_fingerprint"] == fingerprint
  # A resume with our wording would mix two wordings in one run: refused.
  with ScriptedChatServer(_answer) as server:
    assert _run(_hq_args(tmp_path, out, "--domain", "brewing"), server) == 2
    assert server.requests == []


def test_hq_public_style_prompt_file(tmp_path):
  path = _toml(tmp_path / "hq.toml", 'system = "HQ-PUBLIC {n}{field_note}"\nuser = "<d>{document}</d>"\n')
  with ScriptedChatServer(_answer) as server:
    assert _run(_hq_args(tmp_path, str(tmp_path / "o"), "--prompt-style", "public",
                         "--prompt-file", path), server) == 0
    sent = server.requests[-1]["messages"]
  assert sent[0]["content"] == "HQ-PUBLIC 1" and sent[1]["content"].startswith("<d>Starch")
  assert prompts_public.HQ_PUBLIC_PROMPTS.stage == "hq-public"


def test_vl_prompt_file_query_and_positive(tmp_path):
  path = _toml(tmp_path / "vl.toml", 'query = "VLQ-{min_words}-{max_words} {seed}"\n'
                                     'positive = "VLP- {query}"\n')
  seeds = _jsonl(tmp_path / "seeds.jsonl", [{"id": "s0", "text": "engines"}])
  out = str(tmp_path / "o")
  with ScriptedChatServer(_answer) as server:
    assert _run(["vl", "--input", seeds, "--output-dir", out, "--buckets", "8-12",
                 "--min-positive-words", "5", "--prompt-file", path], server) == 0
    query_req, positive_req = server.requests
  assert query_req["messages"][1]["content"] == "VLQ-8-12 engines"
  assert query_req["messages"][0]["content"] == prompts.SYSTEM  # a field left out keeps ours
  assert positive_req["messages"][1]["content"] == "VLP- " + "ten words " * 4 + "ten words"
  assert "prompt_fingerprint" in _settings(out)


@pytest.mark.parametrize("style,text,check", [
    ("ours", 'analysis = "NEGA- {query} / {positive}"\ndocument = "NEGD- {min_words}"\n',
     lambda reqs: (reqs[0]["messages"][1]["content"].startswith("NEGA- why")
                   and reqs[1]["messages"][3]["content"] == "NEGD- 20")),
    ("public", 'user = "NEGP- {query} / {positive} / {min_words}"\n',
     lambda reqs: reqs[0]["messages"][0]["content"] == "NEGP- instr\nwhy do leaves need light? / "
                                                        "Light drives photosynthesis. / 20")])
def test_negatives_prompt_file(tmp_path, style, text, check):
  path = _toml(tmp_path / "neg.toml", text)
  rows = _jsonl(tmp_path / "rows.jsonl", [
      {"row_id": "r0", "source": "hq", "query": "why do leaves need light?", "query_instruction": "instr",
       "positives": ["Light drives photosynthesis."]}])
  with ScriptedChatServer(_answer) as server:
    assert _run(["negatives", "--input", rows, "--output-dir", str(tmp_path / "o"), "--min-words", "20",
                 "--prompt-style", style, "--prompt-file", path], server) == 0
    assert check(server.requests)


@pytest.mark.parametrize("pipeline,extra,text,field", [
    ("hq", [], 'user = "no document here {n}"', "user"),  # required {document} missing
    ("hq", ["--prompt-style", "public"], 'system = "{document}"', "system"),  # not this field's
    ("vl", [], 'positive = "{query} {seed}"', "positive"),
    ("negatives", [], 'analysis_sytem = "typo"', "analysis_sytem"),
    ("negatives", ["--prompt-style", "public"], 'user = 3', "user")])
def test_bad_prompt_file_fails_before_any_request(tmp_path, capsys, pipeline, extra, text, field):
  path = _toml(tmp_path / "bad.toml", text + "\n")
  inp = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "some seed text"}])
  with ScriptedChatServer(_answer) as server:
    assert _run([pipeline, "--input", inp, "--output-dir", str(tmp_path / "o"), *extra,
                 "--prompt-file", path], server) == 2
    assert server.requests == []
  err = capsys.readouterr().err
  assert path in err and repr(field) in err
