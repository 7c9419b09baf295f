"""Each pipeline end to end (CLI -> scripted OpenAI-compatible server on loopback -> TFRecords),
with malformed answers, retries, timeouts, 5xx and an input that always fails."""
import collections
import json
import os
import re
import threading

import pytest

from data_gen.cli import main
from data_gen.testing import ScriptedChatServer
from reasonir_jax.data.reader import read_rows


def _words(n, stem):
  return " ".join(f"{stem}{i % 37}" for i in range(n))


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _outputs(out_dir, name):
  rows = list(read_rows(os.path.join(out_dir, f"{name}-shard*.tfrecord")))
  [manifest_path] = [p for p in os.listdir(out_dir) if p.startswith(name + "-shard")
                     and p.endswith(".manifest.json")]
  with open(os.path.join(out_dir, manifest_path)) as f:
    manifest = json.load(f)
  with open(os.path.join(out_dir, manifest["rejects_file"])) as f:
    rejects = [json.loads(line) for line in f]
  return rows, manifest, rejects


class Script:
  """Per-input scripted behaviour; counts how often each input was asked."""

  def __init__(self):
    self.calls = collections.Counter()
    self.lock = threading.Lock()

  def count(self, key):
    with self.lock:
      self.calls[key] += 1
      return self.calls[key]


def _hq_docs():
  body = ("Enzymes lower activation energy so reactions proceed faster at body temperature; "
          "competitive inhibitors bind the active site while allosteric ones change its shape. ")
  docs = [{"id": f"doc{i}", "text": f"TAG=doc{i}. " + body + _words(60, f"w{i}x"),
           "domain": "biology" if i == 0 else None} for i in range(6)]
  docs = [{k: v for k, v in d.items() if v is not None} for d in docs]
  docs.append({"id": "dup", "text": docs[0]["text"].upper()})  # exact duplicate (normalized)
  docs.append({"id": "near", "text": docs[1]["text"].replace("faster", "quicker")})
  docs.append({"id": "short", "text": "TAG=short too short"})
  return docs


def _hq_responder(script):
  def queries(tag, n=2):
    return [f"Scenario {k} for {tag}: a lab enzyme assay slows when a molecule is added; "
            f"why might raising substrate concentration restore the rate?" for k in range(n)]

  def respond(req):
    tag = re.search(r"TAG=(\w+)", req["messages"][1]["content"]).group(1)
    retry = len(req["messages"]) > 2
    k = script.count(tag)
    if tag == "doc0":  # fenced JSON after prose
      return "Sure! Here you go:\n```json\n" + json.dumps({"hard_query": queries(tag)}) + "\n```"
    if tag == "doc1":  # malformed JSON first, then valid on the feedback turn
      return json.dumps({"hard_query": queries(tag)}) if retry else '{"hard_query": ["unclosed'
    if tag == "doc2":  # a 5xx first (the backend retries it)
      return 500 if k == 1 else json.dumps({"hard_query": queries(tag)})
    if tag == "doc3":  # a timeout first
      return ("sleep", 1.0, "late") if k == 1 else json.dumps({"hard_query": queries(tag)})
    if tag == "doc4":  # always refers to "the document": rejected after 3 attempts
      return json.dumps({"hard_query": ["In a busy lab, what does the document say about enzymes?"] * 2})
    if tag == "doc5":  # too few queries first
      return json.dumps({"hard_query": queries(tag, 2 if retry else 1)})
    return 400
  return respond


def test_hq_end_to_end(tmp_path, tokenizer_dir):
  inp = _write_jsonl(tmp_path / "docs.jsonl", _hq_docs())
  out = str(tmp_path / "out")
  script = Script()
  with ScriptedChatServer(_hq_responder(script), model="gen-70b") as server:
    rc = main(["hq", "--input", inp, "--output-dir", out, "--backend", "openai",
               "--base-url", server.base_url, "--model", "gen-70b", "--queries-per-doc", "2",
               "--min-doc-words", "10", "--near-dup-threshold", "0.8", "--request-timeout", "0.4", "--batch-size", "4", "--retry-backoff", "0.01",
               "--temperature", "0.5", "--seed", "7", "--log-level", "WARNING"])
  assert rc == 0
  rows, manifest, rejects = _outputs(out, "hq")
  docs = {d["id"]: d for d in _hq_docs()}
  assert sorted(r.row_id for r in rows) == sorted(
      f"hq/doc{i}/{k}" for i in (0, 1, 2, 3, 5) for k in range(2))
  for r in rows:
    doc_id = r.row_id.split("/")[1]
    assert r.source == "hq" and r.positives == [docs[doc_id]["text"]] and doc_id in r.query
    meta = json.loads(r.metadata)
    assert meta["generator"] == "gen-70b" and meta["prompt"] == "hq_queries_v1"
    assert meta["sampling"] == {"temperature": 0.5, "top_p": 1.0, "max_tokens": 1536, "seed": 7}
  instr = {r.row_id: r.query_instruction for r in rows}
  assert instr["hq/doc0/0"] == ("Given a biology question, retrieve relevant passages that "
                                "help answer the question")
  assert instr["hq/doc1/0"] == "Given a question, retrieve relevant passages that help answer " \
                               "the question"
  # Filters: the exact and near duplicates and the short document never reach the LLM.
  assert manifest["filters"] == {"input": 9, "after_length": 8, "after_exact_dedup": 7,
                                 "after_near_dedup": 6}
  assert not {"dup", "near", "short"} & set(script.calls)
  assert [r["input_id"] for r in rejects] == ["doc4"]
  assert len(rejects[0]["attempts"]) == 3 and "the document" in rejects[0]["reason"]
  assert manifest["steps"] == {"queries": {"accepted": 5, "rejected": 1, "retried": 4}}
  assert manifest["backend_retries_this_run"] == 2  # the 5xx and the timeout
  assert (manifest["inputs"], manifest["inputs_accepted"], manifest["rows"]) == (6, 5, 10)
  # Retries carry the failed answer and the reason as a follow-up turn.
  assert script.calls["doc1"] == 2 and script.calls["doc4"] == 3

  # The training pipeline's iterator reads the output.
  from reasonir_jax.configs import load_config_file
  from reasonir_jax.data.pipeline import make_host_iterator
  config = load_config_file("tiny")
  config.data.sources = f"hq={out}/hq-*.tfrecord"
  config.train.global_batch_size = 4
  it = make_host_iterator(config, tokenizer_dir, process_index=0, process_count=1, prefetch=0)
  batch = next(iter(it))
  assert it.stats()["rows_read"] >= 4
  leaves = [v for group in batch.values() for v in group.values()]
  assert leaves and all(v.shape[0] >= 4 for v in leaves)


def _vl_responder(script):
  def respond(req):
    text = req["messages"][1]["content"]
    retry = len(req["messages"]) > 2
    if "Seed text" in text:
      tag = re.search(r"TAG=(\w+)", text).group(1)
      lo, hi = map(int, re.search(r"of (\d+) to (\d+) words", text).groups())
      script.count(tag)
      if tag == "s0" and not retry:  # too short for its bucket first
        return json.dumps({"query": _words(max(1, lo - 3), "q")})
      if tag == "s2":  # never long enough
        return json.dumps({"query": "short query"})
      return json.dumps({"query": f"QTAG={tag} " + _words((lo + hi) // 2 - 1, "q")})
    tag = re.search(r"QTAG=(\w+)", text).group(1)
    script.count("pos-" + tag)
    if tag == "s1" and not retry:
      return '{"positive_document": ""}'
    return json.dumps({"positive_document": f"Explanation for {tag}. " + _words(12, "p")})
  return respond


def test_vl_end_to_end(tmp_path):
  seeds = [{"id": f"s{i}", "text": f"TAG=s{i} thermodynamics of engines"} for i in range(4)]
  inp = _write_jsonl(tmp_path / "seeds.jsonl", seeds)
  out = str(tmp_path / "out")
  script = Script()
  with ScriptedChatServer(_vl_responder(script)) as server:
    rc = main(["vl", "--input", inp, "--output-dir", out, "--backend", "openai", "--base-url",
               server.base_url, "--model", "m", "--buckets", "8-12,20-30", "--domain", "physics",
               "--min-positive-words", "5", "--max-positive-words", "50",
               "--log-level", "WARNING"])
  assert rc == 0
  rows, manifest, rejects = _outputs(out, "vl")
  assert sorted(r.row_id for r in rows) == ["vl/s0", "vl/s1", "vl/s3"]
  for r in rows:
    meta = json.loads(r.metadata)
    lo, hi = meta["bucket"]
    assert lo <= len(r.query.split()) <= hi
    assert r.positives[0].startswith("Explanation for")
    assert r.query_instruction == ("Given a physics post, retrieve relevant passages that help "
                                   "answer the post")
  assert [r["input_id"] for r in rejects] == ["s2"] and rejects[0]["step"] == "query"
  assert manifest["steps"]["query"] == {"accepted": 3, "rejected": 1, "retried": 3}
  assert manifest["steps"]["positive"] == {"accepted": 3, "rejected": 0, "retried": 1}
  assert manifest["settings"]["buckets"] == [[8, 12], [20, 30]]
  assert manifest["settings"]["sampling"]["max_tokens"] == 4096


def test_negatives_end_to_end(tmp_path):
  positive = "Photosynthesis converts light into chemical energy in chloroplasts. " * 3
  records = [
      {"row_id": f"r{i}", "source": "hq", "query": f"RID=r{i} why do leaves need light?",
       "positives": [positive], "metadata": json.dumps({"generator": "g0"})}
      for i in range(3)]
  records.append({"id": "ref0", "query": ["instr", "RID=ref0 why is the sky blue?"],
                  "pos": [["", "Rayleigh scattering favours short wavelengths."]], "neg": []})
  inp = _write_jsonl(tmp_path / "rows.jsonl", records)
  out = str(tmp_path / "out")

  def respond(req):
    rid = re.search(r"RID=(\w+)", req["messages"][1]["content"]).group(1)
    if len(req["messages"]) == 2:  # turn 1: the analysis, free text
      return "The query needs the light reactions; keywords like leaves and sunlight mislead."
    retry = len(req["messages"]) > 4
    if rid == "r1" and not retry:  # copies the positive: too much overlap
      return json.dumps({"hard_negative_document": positive * 3})
    if rid == "r2":  # always too short
      return json.dumps({"hard_negative_document": "Leaves are green."})
    return json.dumps({"hard_negative_document": f"Autumn foliage {rid} " + _words(30, "n")})

  with ScriptedChatServer(respond) as server:
    requests = server.requests
    rc = main(["negatives", "--input", inp, "--output-dir", out, "--backend", "openai",
               "--base-url", server.base_url, "--model", "m", "--min-words", "20",
               "--log-level", "WARNING"])
  assert rc == 0
  rows, manifest, rejects = _outputs(out, "negatives")
  by_id = {r.row_id: r for r in rows}
  assert sorted(by_id) == ["r0", "r1", "ref0"]
  assert by_id["r1"].negatives[0].startswith("Autumn foliage r1")
  assert by_id["ref0"].query_instruction == "instr"
  meta = json.loads(by_id["r0"].metadata)
  assert meta["generator"] == "g0"  # the original provenance is kept
  assert meta["hard_negative"]["prompt"] == ["hard_negative_analysis_v1",
                                             "hard_negative_document_v1"]
  assert [r["input_id"] for r in rejects] == ["r2"] and "at least 20" in rejects[0]["reason"]
  assert manifest["steps"]["negative"] == {"accepted": 3, "rejected": 1, "retried": 3}
  assert manifest["steps"]["analysis"] == {"accepted": 4, "rejected": 0, "retried": 0}
  # Multi-turn: the second turn carries the first answer as an assistant message.
  second = [r for r in requests if len(r["messages"]) == 4]
  assert len(second) == 4 and all(r["messages"][2]["role"] == "assistant" and
                                  "light reactions" in r["messages"][2]["content"]
                                  for r in second)


def test_mine_picks_first_non_gold_from_start_index(tmp_path):
  # Every document has 15 tokens and mentions "volcano" fewer times the later it comes, so the
  # BM25 order is d0, d1, ..., d9 (worked by hand: equal lengths, the score grows with tf).
  corpus = [{"id": f"d{i}", "text": " ".join(["volcano"] * (12 - i) + ["filler"] * (i + 3))}
            for i in range(10)]
  gold_text = corpus[3]["text"]
  rows = [{"row_id": "q0", "source": "public", "query": "volcano eruption",
           "positives": [gold_text]},
          {"row_id": "q1", "source": "public", "query": "zebra", "positives": ["zebra stripes"]}]
  inp = _write_jsonl(tmp_path / "rows.jsonl", rows)
  corpus_path = _write_jsonl(tmp_path / "corpus.jsonl",
                             [{"id": d["id"], "content": d["text"]} for d in corpus])
  out = str(tmp_path / "out")
  assert main(["mine", "--input", inp, "--corpus", corpus_path, "--output-dir", out,
               "--start-index", "3", "--log-level", "WARNING"]) == 0
  mined, manifest, rejects = _outputs(out, "mine")
  by_id = {r.row_id: r for r in mined}
  # Index 3 (0-based) is the gold d3, so the pick is index 4 = d4.
  assert by_id["q0"].negatives == [corpus[4]["text"]]
  meta = json.loads(by_id["q0"].metadata)["mined_negative"]
  assert meta["indices"] == [4] and meta["doc_ids"] == ["d4"] and meta["scores"][0] > 0
  # "zebra" matches nothing: every score is 0, the ranking is corpus order, and zero scores are
  # allowed (as in the public miner), so index 3 = d3 is taken.
  assert by_id["q1"].negatives == [corpus[3]["text"]]
  assert json.loads(by_id["q1"].metadata)["mined_negative"]["scores"] == [0.0]
  assert rejects == [] and manifest["steps"]["mine"] == {"accepted": 2, "rejected": 0,
                                                         "retried": 0}
  assert manifest["settings"]["protocol"] == "reference" and manifest["settings"]["top_k"] == 1000
  # --skip-zero-scores: "zebra" gets nothing.
  assert main(["mine", "--input", inp, "--corpus", corpus_path, "--output-dir", out, "--name",
               "skip", "--start-index", "3", "--skip-zero-scores", "--log-level", "WARNING"]) == 0
  mined, _, rejects = _outputs(out, "skip")
  assert [r.row_id for r in mined] == ["q0"] and [r["input_id"] for r in rejects] == ["q1"]
  assert "non-zero score" in rejects[0]["reason"]
  # Without --corpus the corpus is the rows' positives; a row's own positive is never picked.
  rows = [{"row_id": f"r{i}", "source": "public", "query": f"volcano {i}",
           "positives": [corpus[i]["text"]]} for i in range(6)]
  inp = _write_jsonl(tmp_path / "rows2.jsonl", rows)
  assert main(["mine", "--input", inp, "--output-dir", out, "--name", "mine2", "--start-index",
               "0", "--log-level", "WARNING"]) == 0
  mined, manifest, _ = _outputs(out, "mine2")
  assert manifest["settings"]["corpus"] == "input positives"
  by_id = {r.row_id: r for r in mined}
  assert by_id["r0"].negatives == [corpus[1]["text"]]  # index 0 is itself (gold), then d1
  assert by_id["r3"].negatives == [corpus[0]["text"]]


def test_bad_flags_and_inputs_have_clear_errors(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "a", "txt": "no text field"}\n')
  assert main(["hq", "--input", str(bad), "--output-dir", str(tmp_path / "o"), "--backend",
               "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]) == 2
  assert "bad.jsonl:1" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["vl", "--input", str(bad), "--output-dir", "o", "--model", "m", "--backend", "nope"])
  assert main(["vl", "--input", str(bad), "--output-dir", str(tmp_path / "o"), "--model", "m",
               "--buckets", "300to600"]) == 2
  assert "--buckets" in capsys.readouterr().err


def test_filter_once_then_hq_without_filtering(tmp_path, monkeypatch):
  (tmp_path / "edu_scorer.py").write_text(
      "def score(texts):\n  return [2.0 if 'enzyme' in t else 0.5 for t in texts]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  docs = [{"id": f"e{i}", "text": f"TAG=e{i} enzyme " + _words(12, f"k{i}"), "task": "biology"}
          for i in range(3)]
  docs += [{"id": "low", "text": "TAG=low pottery " + _words(12, "z"), "task": "biology"}]
  inp = _write_jsonl(tmp_path / "docs.jsonl", docs)
  kept = str(tmp_path / "kept.jsonl")
  assert main(["filter", "--input", inp, "--output", kept, "--min-doc-words", "5",
               "--quality-scorer", "edu_scorer:score", "--top-n", "2"]) == 0
  with open(kept) as f:
    assert [json.loads(line)["id"] for line in f] == ["e0", "e1"]  # score >= 1, top 2 by id
  with open(kept + ".report.json") as f:
    report = json.load(f)
  assert (report["after_min_quality"], report["after_top_n"]) == (3, 2)
  answer = json.dumps({"hard_query": ["When my enzyme assay stalls at low pH, what changed?"]})
  out = str(tmp_path / "out")
  with ScriptedChatServer(lambda req: answer) as server:
    assert main(["hq", "--input", kept, "--no-filter", "--output-dir", out, "--backend",
                 "openai", "--base-url", server.base_url, "--model", "m",
                 "--queries-per-doc", "1", "--log-level", "WARNING"]) == 0
  rows, manifest, _ = _outputs(out, "hq")
  assert sorted(r.row_id for r in rows) == ["hq/e0/0", "hq/e1/0"]
  assert all(json.loads(r.metadata)["quality_score"] == 2.0 for r in rows)
  assert all(json.loads(r.metadata)["task"] == "biology" for r in rows)
  assert manifest["filters"]["filtered"] == "before (--no-filter)"
