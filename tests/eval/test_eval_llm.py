"""Query rewriting, ReasonIR-Rerank and RAG against a scripted OpenAI-compatible loopback server;
the reference protocols' parsers against small reimplementations of the public code."""
import json
import os

import pytest

from data_gen.testing import ScriptedChatServer, last_user_message, request_text
from reasonir_jax.eval import bright, metrics, protocol, rag, rerank, rewrite
from reasonir_jax.llm import cache as llm_cache
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams


def _backend(server):
  return make_backend("openai", base_url=server.base_url, model="m", max_retries=0, max_concurrency=4)


# ---------------------------------------------------------------- rerank

@pytest.mark.parametrize("answer,score", [
    ("Reasoning... Relevance score: 4.", 4.0),
    ("**Relevance score:** 3", 3.0),
    ("relevance score: 2.5", 2.5),
    ("Relevance score: 1. Wait, on reflection Relevance score: 5.", 5.0),  # the last marker counts
    ("I think it is quite relevant.", 0.0),  # missing marker
    ("Relevance score: high", -1.0),  # parse failure
    ("Relevance score: 7", -1.0),  # out of the 0..5 scale
    (ChatFailure("HTTP 500"), -1.0),
])
def test_parse_relevance(answer, score):
  assert rerank.parse_relevance(answer) == score


def _public_rerank_parse(output: str) -> float:
  """The public reranker's parsing (ReasonIR evaluation/bright/reranker.py), rewritten: the two
  characters after the last marker as a number over 5; no marker 0; otherwise -1."""
  pos = output.rfind("Relevance score:")
  if pos == -1:
    return 0
  try:
    return float(output[pos + 16:pos + 18]) / 5
  except ValueError:
    return -1


@pytest.mark.parametrize("answer,expected", [
    ("Relevance score: 4.", 0.8),
    ("Relevance score:3.", 0.6),
    ("Relevance score: 5", 1.0),
    ("Relevance score: 0.", 0.0),
    ("Relevance score: 1. On reflection, Relevance score: 2.", 0.4),  # the last marker counts
    ("Relevance score: 10", 0.2),  # only two characters are read: " 1"
    ("Relevance score:\n4", 0.8),
    ("Relevance score: **3**", -1.0),  # " *" does not parse: -1 on the normalised scale
    ("Relevance score: high", -1.0),
    ("Relevance score:", -1.0),
    ("relevance score: 4", 0.0),  # the marker is case-sensitive: no marker
    ("**Relevance score:** 3", -1.0),  # the two characters after the marker are "**"
    ("It is relevant.", 0.0),
])
def test_reference_rerank_score_table(answer, expected):
  assert protocol.rerank_score(answer) == pytest.approx(expected)
  assert protocol.rerank_score(answer) == pytest.approx(_public_rerank_parse(answer))


def test_reference_rerank_failure_and_interpolation():
  assert protocol.rerank_score(ChatFailure("HTTP 500")) == -1.0
  # -1 after the division: final = 0.5 * -1 + 0.5 * retriever (ours: 0.5 * -1 / 5 + ...).
  assert rerank.normalised_score(ChatFailure("x"), "reference") == -1.0
  assert rerank.normalised_score(ChatFailure("x"), "ours") == pytest.approx(-0.2)


def test_reference_rerank_prompts():
  for task in ("aops", "theoremqa_questions", "theoremqa_theorems", "leetcode", "pony", "biology", "robotics"):
    text = protocol.rerank_prompt(task, "QUERY-TEXT", "DOC-TEXT")
    assert text.index("QUERY-TEXT") < text.index("DOC-TEXT"), task  # query first, document second
    assert "'Relevance score: X.'" in text and "0 to 5" in text and "nothing else" in text, task
  assert "pony" in protocol.rerank_prompt("pony", "q", "d")
  assert protocol.rerank_prompt("biology", "q", "d") == protocol.rerank_prompt("stackoverflow", "q", "d")
  assert protocol.rerank_prompt("theoremqa_questions", "q", "d") == protocol.rerank_prompt(
      "theoremqa_theorems", "q", "d")
  general = protocol.rerank_prompt("biology", "q", "d")
  assert general.index("Relevance score") < general.index("<start_query>")  # instructions first


def test_rerank_protocol_constants_the_docs_cite():
  # README and docs/reference.md cite these; pinned to the public reranker's values.
  assert protocol.RERANK_SAMPLING == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 32}
  assert (protocol.RERANK_TOP_K, protocol.RERANK_ALPHA, protocol.RERANK_SEED) == (100, 0.5, 42)
  assert protocol.RERANK_MARKER == "Relevance score:" and not protocol.RERANK_CHAT
  assert protocol.RERANK_KEEP_TRUNCATED
  s = rerank.sampling_for("reference", 42, None)
  assert (s.temperature, s.top_p, s.max_tokens, s.seed, s.stop) == (0.6, 0.9, 32, 42, ())


def test_interpolation():
  assert rerank.interpolate(1.0, 0.2) == pytest.approx(0.6)
  assert rerank.interpolate(0, 0.8, alpha=0.25) == pytest.approx(0.6)
  assert rerank.interpolate(-0.2, 0.5) == pytest.approx(0.15)


def _scripted_judge(answers: dict):
  """A responder answering by the first document snippet found in the prompt (raw or chat), else
  score 1."""
  def judge(request):
    text = request_text(request)
    return next((a for snippet, a in answers.items() if snippet in text), "Relevance score: 1.")
  return judge


_judge = _scripted_judge({"Mitochondria produce ATP": "Relevance score: 5.",
                          "Photosynthesis in plants": "The document explains it. Relevance score: 4",
                          "DNA replication": "no marker at all",
                          "Enzymes": 400,  # a failed request
                          "Binary search halves": "Relevance score: 5"})


def test_rerank_dir_against_scripted_server(bright_dir, tmp_path):
  out = str(tmp_path)
  base = {"b0": {"bio_neuron": 0.9, "bio_mito": 0.5, "bio_dna": 0.4, "bio_photo": 0.1},
          "b1": {"bio_enzyme": 0.7, "bio_photo": 0.6, "bio_neuron": 0.2},
          "b2": {"bio_dna": 0.3, "bio_neuron": 0.2}}
  metrics.write_trec_run(os.path.join(out, "biology.run"), base)
  metrics.write_trec_run(os.path.join(out, "leetcode.run"), {"l0": {"lc_dp": 0.8, "lc_bsearch": 0.6}})
  with ScriptedChatServer(_judge) as server:
    backend = _backend(server)
    results = rerank.rerank_dir(backend, out, bright_dir, ["biology", "leetcode"], top_k=3, seed=7,
                                protocol_name="ours")
    backend.close()
    requests = list(server.requests)
  new = metrics.read_trec_run(os.path.join(out, "rerank", "biology.run"))
  # top_k=3: b0's 4th document is dropped; every score is 0.5 * rel / 5 + 0.5 * retriever.
  assert set(new["b0"]) == {"bio_neuron", "bio_mito", "bio_dna"}
  assert new["b0"]["bio_mito"] == pytest.approx(0.5 * 5 / 5 + 0.5 * 0.5)
  assert new["b0"]["bio_neuron"] == pytest.approx(0.5 * 1 / 5 + 0.5 * 0.9)
  assert new["b0"]["bio_dna"] == pytest.approx(0.5 * 0 + 0.5 * 0.4)  # missing marker: 0
  assert new["b1"]["bio_enzyme"] == pytest.approx(0.5 * -1 / 5 + 0.5 * 0.7)  # failure: -1
  assert metrics.ranked_ids(new["b0"])[0] == "bio_mito"
  assert results["biology"]["ndcg@10"] > results["biology"]["before"]["ndcg@10"]
  assert len(requests) == 3 + 3 + 2 + 2
  assert all(r["seed"] == 7 and r["temperature"] == 0.0 for r in requests)
  assert all("prompt" not in r and len(r["messages"]) == 1 for r in requests)  # ours: chat
  leet = [r for r in requests if "Binary search halves" in last_user_message(r)]
  assert "coding problem" in last_user_message(leet[0])
  judgments = [json.loads(l) for l in open(os.path.join(out, "rerank", "biology.judgments.jsonl"))]
  assert {j["relevance"] for j in judgments} == {5.0, 4.0, 1.0, 0.0, -1.0}
  assert json.load(open(os.path.join(out, "rerank", "results.json")))["config"]["seed"] == 7


_reference_judge = _scripted_judge({"Mitochondria produce ATP": "Relevance score: 5.",
                                    "Photosynthesis in plants": "Relevance score: 4",
                                    "DNA replication": "no marker at all",
                                    "Enzymes": "Relevance score: **2**",  # unparseable: -1
                                    # cut off at max_tokens: parsed like any answer
                                    "Neurons transmit": ("length", "Relevance score: 3 because the")})


def _base_runs(out):
  metrics.write_trec_run(os.path.join(out, "biology.run"), {
      "b0": {"bio_neuron": 0.9, "bio_mito": 0.5, "bio_dna": 0.4, "bio_photo": 0.1},
      "b1": {"bio_enzyme": 0.7, "bio_photo": 0.6, "bio_neuron": 0.2},
      "b2": {"bio_dna": 0.3, "bio_neuron": 0.2, "bio_enzyme": 0.1, "bio_photo": 0.05, "bio_mito": 0.01}})


def test_reference_rerank_against_scripted_server(bright_dir, tmp_path):
  out = str(tmp_path)
  _base_runs(out)
  metrics.write_trec_run(os.path.join(out, "leetcode.run"), {"l0": {"lc_dp": 0.8, "lc_bsearch": 0.6}})
  with ScriptedChatServer(_reference_judge) as server:
    backend = _backend(server)
    rerank.rerank_dir(backend, out, bright_dir, ["biology", "leetcode"])
    first = list(server.requests)
    rerank.rerank_dir(backend, out, bright_dir, ["biology", "leetcode"])  # all answers cached
    backend.close()
    assert len(server.requests) == len(first) == 4 + 3 + 5 + 2
    assert set(server.paths) == {"/v1/completions"}  # raw prompts, no chat template
  assert all(r["temperature"] == 0.6 and r["top_p"] == 0.9 and r["max_tokens"] == 32 for r in first)
  assert all("messages" not in r for r in first)
  # The exact prompt string of the public layout, nothing around it.
  query = "Why do cells need mitochondria to make ATP energy?"
  doc = "Mitochondria produce ATP through cellular respiration in the cell."
  assert protocol.rerank_prompt("biology", query, doc) in [r["prompt"] for r in first]
  new = metrics.read_trec_run(os.path.join(out, "rerank", "biology.run"))
  assert new["b0"]["bio_neuron"] == pytest.approx(0.5 * 0.6 + 0.5 * 0.9)  # the cut-off answer
  assert new["b0"]["bio_mito"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
  assert new["b1"]["bio_photo"] == pytest.approx(0.5 * 0.8 + 0.5 * 0.6)
  assert new["b0"]["bio_dna"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.4)
  assert new["b1"]["bio_enzyme"] == pytest.approx(0.5 * -1.0 + 0.5 * 0.7)  # -1 after the division
  leet = [r["prompt"] for r in first if "Binary search halves" in r["prompt"]]
  assert "data structures" in leet[0]
  public = json.load(open(os.path.join(out, "rerank", "biology", "results.json")))
  assert {"NDCG@10", "MAP@100", "Recall@100", "P@5", "MRR"} <= set(public)


def test_rerank_prompt_file_reaches_the_server_and_keys_the_cache(bright_dir, tmp_path):
  out = str(tmp_path)
  _base_runs(out)
  path = tmp_path / "rerank.toml"
  path.write_text('general = """MY-GENERAL {query} || {document}\nRelevance score:"""\n')
  from reasonir_jax.llm import prompt_file
  mine = prompt_file.load(protocol.RERANK_PROMPTS, str(path))
  with ScriptedChatServer(_reference_judge) as server:
    backend = _backend(server)
    rerank.rerank_dir(backend, out, bright_dir, ["biology"], prompts=mine)
    n_file = len(server.requests)
    rerank.rerank_dir(backend, out, bright_dir, ["biology"])  # our wording: its own answers
    n_ours = len(server.requests) - n_file
    rerank.rerank_dir(backend, out, bright_dir, ["biology"], prompts=mine)  # all from the cache
    backend.close()
    sent = list(server.requests)
  assert n_file == n_ours == 12 and len(sent) == 24
  query = "Why do cells need mitochondria to make ATP energy?"
  doc = "Mitochondria produce ATP through cellular respiration in the cell."
  assert f"MY-GENERAL {query} || {doc}\nRelevance score:" in [r["prompt"] for r in sent[:n_file]]
  assert protocol.rerank_prompt("biology", query, doc) in [r["prompt"] for r in sent[n_file:]]
  config = json.load(open(os.path.join(out, "rerank", "results.json")))["config"]
  assert config["prompts"] == {"source": str(path), "fingerprint": mine.fingerprint}
  # Our wording's requests are what they were before prompt files existed (same cache keys).
  assert protocol.rerank_prompt("biology", "q", "d") == protocol.RERANK_PROMPTS.defaults().render(
      "general", query="q", document="d")


def test_rerank_ours_prompt_file_math_field(bright_dir, tmp_path):
  from reasonir_jax.llm import prompt_file
  path = tmp_path / "ours.toml"
  path.write_text('math = "MATH {document} for {query}. Relevance score: X."\n')
  prompts = prompt_file.load(rerank.OURS_PROMPTS, str(path))
  assert rerank.prompt_for("aops", "Q", "D", prompts=prompts) == "MATH D for Q. Relevance score: X."
  assert rerank.prompt_for("biology", "Q", "D", prompts=prompts) == rerank.prompt_for("biology", "Q", "D")
  with pytest.raises(ValueError, match="rerank-ours prompts given to --protocol reference"):
    rerank.rerank_run(None, "aops", {}, {}, {}, prompts=prompts)


@pytest.mark.parametrize("protocol_name,text,field", [
    ("reference", 'pony = "no document {query}"', "pony"),
    ("reference", 'math = "{query} {document}"', "math"),  # an ours field under reference
    ("ours", 'code = "{query} {document} {task}"', "code")])
def test_bad_rerank_prompt_file_fails_before_any_request(bright_dir, tmp_path, monkeypatch, capsys,
                                                         protocol_name, text, field):
  metrics.write_trec_run(os.path.join(str(tmp_path), "biology.run"), {"b0": {"bio_mito": 0.5}})
  path = tmp_path / "bad.toml"
  path.write_text(text + "\n")
  built = []
  monkeypatch.setattr(rerank.llm_flags, "make_backend_from_args", lambda args: built.append(args))
  with pytest.raises(SystemExit):
    rerank.main(["--run-dir", str(tmp_path), "--data", bright_dir, "--protocol", protocol_name,
                 "--backend", "openai", "--backend-model", "m", "--base-url", "http://127.0.0.1:9/v1",
                 "--prompt-file", str(path)])
  err = capsys.readouterr().err
  assert str(path) in err and field in err and not built


def test_rerank_resumes_after_kill(bright_dir, tmp_path):
  """A real SIGKILL mid-task: the rerun asks only for the judgments not yet on disk."""
  import signal
  import subprocess
  import sys
  import time

  out = str(tmp_path)
  _base_runs(out)

  def slow(request):
    time.sleep(0.15)
    return _reference_judge(request)

  cache_path = os.path.join(out, "rerank", "cache", "biology.jsonl")
  with ScriptedChatServer(slow) as server:
    cmd = [sys.executable, "-m", "reasonir_jax.eval.rerank", "--run-dir", out, "--data", bright_dir,
           "--tasks", "biology", "--backend", "openai", "--backend-model", "m", "--base-url", server.base_url,
           "--backend-arg", "max_concurrency=1", "--backend-arg", "max_retries=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
      if os.path.isfile(cache_path) and len(open(cache_path).read().splitlines()) >= 4:
        break
      time.sleep(0.02)
    assert child.poll() is None, "the child finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    cached = {json.loads(l)["key"] for l in open(cache_path).read().splitlines() if l.strip()}
    assert 4 <= len(cached) < 12
    assert not os.path.isfile(os.path.join(out, "rerank", "biology.run"))  # it died mid-task
    killed_requests = len(server.requests)
    backend = _backend(server)
    rerank.rerank_dir(backend, out, bright_dir, ["biology"])
    backend.close()
    resumed = server.requests[killed_requests:]
  sampling = rerank.sampling_for("reference", protocol.RERANK_SEED, None)
  keys = [llm_cache.request_key("m", "rerank-reference", r["prompt"], sampling, raw=True, keep_truncated=True)
          for r in resumed]
  assert not set(keys) & cached  # no call made again
  assert len(resumed) == 12 - len(cached)
  # The result equals an uninterrupted run's.
  new = metrics.read_trec_run(os.path.join(out, "rerank", "biology.run"))
  assert new["b2"]["bio_mito"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.01)
  assert len(new["b2"]) == 5


def test_reference_rerank_without_a_raw_path_falls_back_to_chat(bright_dir, tmp_path, caplog):
  out = str(tmp_path)
  _base_runs(out)
  with ScriptedChatServer(_reference_judge) as server:
    backend = _backend(server)
    backend.raw_completion = False  # as a backend that has only chat (e.g. vllm-async)
    with caplog.at_level("WARNING"):
      rerank.rerank_dir(backend, out, bright_dir, ["biology"])
    backend.close()
  assert set(server.paths) == {"/v1/chat/completions"}
  assert all(len(r["messages"]) == 1 for r in server.requests)
  assert "no raw-completion path" in caplog.text


def test_cache_keys_tell_raw_from_chat_and_keep_old_keys():
  import hashlib
  prompt, sampling = "Query: q\nDocument: d", SamplingParams(temperature=0.6, top_p=0.9, max_tokens=32, seed=42)
  chat = [{"role": "user", "content": prompt}]
  # The key as it was computed before raw requests and penalties existed: earlier caches stay valid.
  old = hashlib.sha256(json.dumps(["m", "rerank-reference", chat, {"temperature": 0.6, "top_p": 0.9,
                                   "max_tokens": 32, "seed": 42}], sort_keys=True).encode()).hexdigest()
  assert llm_cache.request_key("m", "rerank-reference", chat, sampling) == old
  keys = {llm_cache.request_key("m", "rerank-reference", chat, sampling),
          llm_cache.request_key("m", "rerank-reference", prompt, sampling),  # a bare string, no raw flag
          llm_cache.request_key("m", "rerank-reference", prompt, sampling, raw=True),
          llm_cache.request_key("m", "rerank-reference", prompt, sampling, raw=True, keep_truncated=True),
          llm_cache.request_key("m", "rerank-reference", chat, SamplingParams(
              temperature=0.6, top_p=0.9, max_tokens=32, seed=42, frequency_penalty=1.0)),
          llm_cache.request_key("m", "rerank-reference", chat, SamplingParams(
              temperature=0.6, top_p=0.9, max_tokens=32, seed=42, presence_penalty=1.0)),
          llm_cache.request_key("m", "rerank-reference", chat, SamplingParams(
              temperature=0.6, top_p=0.9, max_tokens=32, seed=42, stop=("Question:",)))}
  assert len(keys) == 7  # stop strings, when set, are part of the key


def test_cached_chat_answer_is_not_reused_for_a_raw_request(tmp_path):
  cache = llm_cache.AnswerCache(str(tmp_path / "c.jsonl"))
  sampling = SamplingParams(max_tokens=8)
  with ScriptedChatServer(lambda r: ("raw " if "prompt" in r else "chat ") + request_text(r)) as server:
    backend = _backend(server)
    chat, _ = llm_cache.cached_generate(backend, cache, [[{"role": "user", "content": "p"}]], sampling, protocol="x")
    raw, sent = llm_cache.cached_generate(backend, cache, ["p"], sampling, protocol="x", raw=True)
    again, sent_again = llm_cache.cached_generate(backend, cache, ["p"], sampling, protocol="x", raw=True)
    backend.close()
  cache.close()
  assert (chat, raw, again) == (["chat p"], ["raw p"], ["raw p"])
  assert (sent, sent_again) == (1, 0) and server.paths == ["/v1/chat/completions", "/v1/completions"]


# ---------------------------------------------------------------- rewrite

def test_reference_rewrite_prompt_and_cache(bright_dir, tmp_path):
  def expand(request):
    return "expanded " + last_user_message(request)[:20]

  with ScriptedChatServer(expand) as server:
    argv = ["--data", bright_dir, "--tasks", "biology", "--out", str(tmp_path / "rw"), "--backend", "openai",
            "--backend-model", "m", "--base-url", server.base_url]
    rewrite.main(argv)
    first = list(server.requests)
    rewrite.main(argv)  # every rewrite is in the cache: no request
    assert len(server.requests) == len(first) == 3
  (req,) = [r for r in first if "mitochondria" in last_user_message(r)]
  assert req["messages"][0] == {"role": "system", "content": "You are a helpful assistant"}
  text = last_user_message(req)
  # The query (one line) comes first, then the instructions, which state the 2048-token budget.
  assert text.startswith("Why do cells need mitochondria to make ATP energy?\n\nInstructions:\n1. ")
  assert "2048 tokens" in text and "3. " in text
  assert req["temperature"] == 0.8 and req["top_p"] == 0.8 and req["max_tokens"] == 2048
  assert protocol.rewrite_messages("a\nb", 10)[1]["content"].startswith("a b\n\n")


def test_rewrite_then_evaluate(bright_dir, tmp_path):
  def expand(request):
    text = last_user_message(request)
    assert "core problem" in text and "step by step" in text and "draft answer" in text
    return "mitochondria ATP respiration photosynthesis glucose DNA replication"

  with ScriptedChatServer(expand) as server:
    rewrite.main(["--data", bright_dir, "--tasks", "biology", "--out", str(tmp_path / "rw"),
                  "--backend", "openai", "--backend-model", "m", "--base-url", server.base_url,
                  "--max-tokens", "77", "--protocol", "ours"])
    assert all(r["temperature"] == 0.8 and r["top_p"] == 0.8 and r["max_tokens"] == 77
               for r in server.requests)
    rows = [json.loads(l) for l in open(tmp_path / "rw" / "biology.jsonl")]
    assert [r["id"] for r in rows] == ["b0", "b1", "b2"] and rows[0]["query"].startswith("mitochondria")
    # The eval option does the same in one go and saves the rewrites.
    bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(tmp_path / "ev"), "--tasks",
                 "biology", "--rewrite-backend", "openai", "--rewrite-backend-model", "m", "--base-url",
                 server.base_url, "--protocol", "ours"])
  assert os.path.isfile(tmp_path / "ev" / "rewritten" / "biology.jsonl")
  # Saved rewrites feed back through --queries.
  bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(tmp_path / "fb"), "--tasks", "biology",
               "--queries", str(tmp_path / "rw")])
  saved = [json.loads(l) for l in open(tmp_path / "fb" / "queries" / "biology.jsonl")]
  assert saved == rows


# ---------------------------------------------------------------- RAG

@pytest.mark.parametrize("text,letter", [
    ("... so the answer is (C).", "C"),
    ("The answer is B", "B"),
    ("the answer is (A). Hmm, no: the answer is (D)", "D"),
    ("Answer: (B)", "B"),
    ("the answer is (F)", None),  # not one of 4 choices
    ("I am not sure.", None),
    (ChatFailure("timeout"), None),
])
def test_parse_answer(text, letter):
  assert rag.parse_answer(text, 4) == letter


def _questions(tmp_path):
  path = tmp_path / "q.jsonl"
  rows = [{"id": "m0", "question": "Which organelle makes ATP?", "choices": ["Nucleus", "Mitochondrion",
                                                                             "Ribosome", "Golgi"],
           "answer": "B", "subject": "college_biology"},
          {"id": "m1", "question": "What do plants make from light?", "choices": ["Glucose", "Salt", "Iron",
                                                                                  "Gold"], "answer": 0}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_load_questions_formats(tmp_path):
  qs = rag.load_questions(_questions(tmp_path), "mmlu")
  assert [q["answer"] for q in qs] == ["B", "A"] and qs[0]["subject"] == "college biology"
  gpqa = tmp_path / "g.jsonl"
  gpqa.write_text(json.dumps({"Record ID": "r1", "Question": "Q?", "Correct Answer": "right",
                              "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
                              "Incorrect Answer 3": "w3"}) + "\n")
  (g,) = rag.load_questions(str(gpqa), "gpqa")
  assert g["choices"][rag.LETTERS.index(g["answer"])] == "right"
  assert rag.load_questions(str(gpqa), "gpqa") == [g]  # seeded shuffle repeats
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "E"}) + "\n")
  with pytest.raises(ValueError, match="answer 'E'"):
    rag.load_questions(str(bad), "mmlu")


def test_prompts_follow_the_reference_layout():
  q = {"question": "Q?", "choices": ["x", "y"], "subject": ""}
  mmlu = rag.build_prompt("mmlu", q, ["p one", "p two"])
  assert mmlu.startswith("p one\n\np two\n\n") and 'the answer is (X)' in mmlu and "(B) y" in mmlu
  assert rag.build_prompt("gpqa", q, ["p one", "p two"]).startswith("Passage 1: p one\n\nPassage 2: p two")
  assert "Passage" not in rag.build_prompt("gpqa", q)


def test_rag_retrieval_and_answers(tmp_path, bow_encoder):
  store = tmp_path / "store"
  store.mkdir()
  (store / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
      {"id": "p0", "text": "The mitochondrion organelle makes ATP for the cell."},
      {"id": "p1", "text": "Plants make glucose from light by photosynthesis."},
      {"id": "p2", "text": "Iron and gold are metals."}]))
  ids, texts = rag.load_datastore(str(store))
  qs = rag.load_questions(_questions(tmp_path), "mmlu")
  enc = bow_encoder()
  passages = rag.retrieve_passages(enc, "k", qs, ids, texts, k=1, instruction=rag.DEFAULT_INSTRUCTION,
                                   cache_dir=str(tmp_path / "cache"))
  assert passages == [[texts[0]], [texts[1]]]
  rag.retrieve_passages(enc, "k", qs, ids, texts, k=1, instruction="x", cache_dir=str(tmp_path / "cache"))
  assert enc.texts_encoded == 3 + 2 + 2  # the datastore is encoded once

  def reader(request):
    text = last_user_message(request)
    if "mitochondrion organelle" in text:
      return "It is the mitochondrion, so the answer is (B)."
    if "glucose from light" in text:
      return "Answer: A"
    return "Probably the answer is (C)."

  with ScriptedChatServer(reader) as server:
    backend = _backend(server)
    closed, _ = rag.answer_questions(backend, "mmlu", qs, None)
    with_rag, rows = rag.answer_questions(backend, "mmlu", qs, passages)
    backend.close()
    assert all(r["temperature"] == 0.0 for r in server.requests)
  assert closed == 0.0 and with_rag == 1.0
  assert [r["prediction"] for r in rows] == ["B", "A"]


def test_reference_gpqa_requests_carry_the_frequency_penalty(tmp_path):
  qs = rag.load_questions(_questions(tmp_path), "gpqa")
  with ScriptedChatServer(lambda r: "so \\boxed{B}") as server:
    backend = _backend(server)
    acc, _ = rag.answer_questions(backend, "gpqa", qs, [["p one"], ["p two"]])
    rag.answer_questions(backend, "mmlu", qs, None)
    ours = len(server.requests)
    rag.answer_questions(backend, "gpqa", qs, None, protocol_name="ours")
    backend.close()
  gpqa, mmlu, ours = server.requests[:2], server.requests[2:4], server.requests[ours:]
  assert acc == 0.5 and set(server.paths) == {"/v1/chat/completions"}
  # [G]: frequency_penalty = the yaml's repetition_penalty 1.0, no presence penalty.
  assert all(r["frequency_penalty"] == 1.0 and "presence_penalty" not in r for r in gpqa)
  assert all((r["temperature"], r["top_p"], r["max_tokens"]) == (0.7, 0.8, 8000) for r in gpqa)
  assert all("frequency_penalty" not in r for r in mmlu + ours)
  # MMLU stops at "Question:" ([M]); a system message precedes the prompt in both reference tasks.
  assert all(r["stop"] == ["Question:"] for r in mmlu) and all("stop" not in r for r in gpqa + ours)
  assert all(r["messages"][0]["role"] == "system" for r in gpqa + mmlu)
  assert all([m["role"] for m in r["messages"]] == ["user"] for r in ours)


def test_rag_cli_with_tiny_model(tmp_path, tiny_model_dir):
  pytest.importorskip("reasonir_jax.encoder")
  store = tmp_path / "store"
  store.mkdir()
  (store / "a.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": f"passage {i} about cells"}) + "\n"
                                         for i in range(5)))
  with ScriptedChatServer(lambda r: "the answer is (B)" if "Passage 1:" in last_user_message(r)
                          else "the answer is (A)") as server:
    result = rag.main(["--task", "gpqa", "--data", _questions(tmp_path), "--datastore", str(store), "--model",
                       tiny_model_dir, "--dtype", "float32", "--max-length", "64", "--k", "2", "--protocol", "ours",
                       "--backend", "openai", "--backend-model", "m", "--base-url", server.base_url, "--out",
                       str(tmp_path / "out")])
  assert result["accuracy_closed_book"] == 0.5 and result["accuracy_with_retrieval"] == 0.5
  saved = json.load(open(tmp_path / "out" / "rag_gpqa.json"))
  assert all(len(p) == 2 for p in saved["passages"])


def test_backend_flags_errors_name_the_flag(bright_dir, tmp_path, capsys):
  with pytest.raises(SystemExit):
    bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(tmp_path), "--tasks", "biology",
                 "--rewrite-backend", "openai", "--rewrite-backend-model", "m"])
  assert "--rewrite-backend openai needs --" in capsys.readouterr().err  # names the missing URL flag
  with pytest.raises(SystemExit):
    rerank.main(["--run-dir", str(tmp_path), "--data", bright_dir, "--backend", "openai", "--base-url", "http://x"])
  assert "no <task>.run files" in capsys.readouterr().err


def test_answer_cache_skips_a_torn_last_row(tmp_path):
  path = tmp_path / "c.jsonl"
  path.write_text(json.dumps({"key": "k1", "answer": "a1"}) + "\n" + '{"key": "k2", "ans')  # killed mid-write
  cache = llm_cache.AnswerCache(str(path))
  assert cache.answers == {"k1": "a1"}
  cache.put("k3", "a3")
  cache.close()
  assert llm_cache.AnswerCache(str(path)).answers == {"k1": "a1", "k3": "a3"}
