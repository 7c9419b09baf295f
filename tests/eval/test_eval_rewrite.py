"""Query rewriting as ReasonIR's public budgeted script does it (prompt layout, cut rewrites used as
cut, prompt files, the protocol constants the docs cite) and the query-length scaling sweep, against
a scripted OpenAI-compatible loopback server."""
import json
import os

import pytest

from data_gen.testing import ScriptedChatServer, last_user_message
from reasonir_jax.eval import protocol, rewrite, scaling
from reasonir_jax.llm import cache as llm_cache
from reasonir_jax.llm import prompt_file
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import SamplingParams

QUERIES = ["Why do cells need mitochondria?", "How do plants\nmake glucose?"]


def _backend(server):
  return make_backend("openai", base_url=server.base_url, model="m", max_retries=0, max_concurrency=4)


def test_reference_protocol_constants():
  """The rewriting facts README and eval/protocol.py cite."""
  assert protocol.REWRITE_SAMPLING == {"temperature": 0.8, "top_p": 0.8, "max_tokens": 2048}
  assert protocol.REWRITE_SYSTEM == "You are a helpful assistant"
  assert protocol.REWRITE_KEEP_CUT is True  # a rewrite cut at the budget is used as cut
  assert rewrite.KEEP_CUT == {"reference": True, "ours": False}
  assert rewrite.DEFAULT_MAX_TOKENS == {"reference": 2048, "ours": 4096}


def test_reference_prompt_layout_states_the_budget_after_the_steps():
  (system, user) = protocol.rewrite_messages("a\nb", 64)
  assert system == {"role": "system", "content": "You are a helpful assistant"}
  assert user["role"] == "user"
  assert user["content"] == (
      "a b\n\n"
      "Instructions:\n"
      "1. Work out the core problem being asked.\n"
      "2. Reason through it step by step, describing in detail which information would be relevant "
      "and useful for addressing the question.\n"
      "3. Write a draft answer that includes as many of your thoughts as you can.\n"
      "Keep your whole answer within 64 tokens.\n")
  # No budget, no budget sentence (the public script states one only when given).
  assert protocol.rewrite_messages("a", None)[1]["content"].endswith("as you can.\n")


def test_cut_rewrite_is_used_as_cut_and_cached(tmp_path):
  """finish_reason=length: the reference uses the text as cut ("cut", not "failed"), the cache
  keeps it (a rerun sends nothing); `ours` keeps the original query."""
  with ScriptedChatServer(lambda req: ("length", "cut " + last_user_message(req)[:12])) as server:
    backend = _backend(server)
    try:
      cache = llm_cache.open_cache(str(tmp_path), "biology")
      out, stats = rewrite.rewrite_queries(backend, QUERIES, "biology", 32, cache=cache)
      cache.close()
      assert stats == {"queries": 2, "cut": 2, "failed": 0}
      assert out == ["cut Why do cells", "cut How do plant"]
      assert len(server.requests) == 2 and server.requests[0]["max_tokens"] == 32
      cache = llm_cache.open_cache(str(tmp_path), "biology")
      again, stats = rewrite.rewrite_queries(backend, QUERIES, "biology", 32, cache=cache)
      cache.close()
      assert (again, stats["cut"], len(server.requests)) == (out, 2, 2)
      rows = [json.loads(line) for line in open(tmp_path / "cache" / "biology.jsonl")]
      assert all(r["cut"] is True for r in rows)
      ours, stats = rewrite.rewrite_queries(backend, QUERIES, "biology", 32, protocol_name="ours")
      assert ours == QUERIES and stats == {"queries": 2, "cut": 0, "failed": 2}
    finally:
      backend.close()


def test_cached_cut_answer_is_asked_again_by_a_caller_that_drops_cut_answers(tmp_path):
  cache = llm_cache.AnswerCache(str(tmp_path / "c.jsonl"))
  cache.put("k", "partial", cut=True)
  assert cache.get("k") is None
  kept = cache.get("k", keep_cut=True)
  assert (kept.kind, kept.text) == ("length", "partial")
  cache.put("k", "whole")
  assert cache.get("k") == "whole"


def _write(tmp_path, text):
  path = tmp_path / "rewrite.toml"
  path.write_text(text)
  return str(path)


def test_prompt_file_changes_the_request_and_its_cache_key(tmp_path):
  path = _write(tmp_path, 'system = ""\nuser = "{instruction}: {query}\\n"\nbudget = "At most {budget}."\n')
  prompts = rewrite.load_prompts("reference", path)
  messages = rewrite.rewrite_messages("why?", "biology", 128, "reference", prompts)
  assert messages == [{"role": "user", "content": "Given a biology post, retrieve relevant passages that help "
                       "answer the post: why?\nAt most 128."}]
  ours = rewrite.rewrite_messages("why?", "biology", 128, "reference")
  sampling = SamplingParams(temperature=0.8, top_p=0.8, max_tokens=128)
  # The key holds the rendered request: another wording never reads this wording's answers.
  assert (llm_cache.request_key("m", "rewrite-reference", messages, sampling)
          != llm_cache.request_key("m", "rewrite-reference", ours, sampling))
  assert prompts.fingerprint != rewrite.SPECS["reference"].defaults().fingerprint


@pytest.mark.parametrize("protocol_name, text, words", [
    ("reference", 'budget = "Be brief."\n', ["'budget'", "lacks required placeholder", "budget"]),
    ("reference", 'user = "{question}"\n', ["'user'", "unknown placeholder", "question", "instruction"]),
    ("ours", 'budget = "{budget}"\n', ["unknown rewrite prompt field", "budget"]),
])
def test_bad_prompt_files_name_the_file_and_field(tmp_path, protocol_name, text, words):
  path = _write(tmp_path, text)
  with pytest.raises(prompt_file.PromptFileError) as e:
    rewrite.load_prompts(protocol_name, path)
  for word in [path] + words:
    assert word in str(e.value)


def test_the_documented_example_prompt_file_loads(tmp_path):
  doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "prompt_files.md")).read()
  example = doc.split("### `rewrite`", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
  prompts = rewrite.load_prompts("reference", _write(tmp_path, example))
  (user,) = rewrite.rewrite_messages("why?", "biology", 64, "reference", prompts)
  assert "Query: why?" in user["content"] and user["content"].endswith("at most 64 tokens.\n")


def test_rewrite_cli_takes_a_prompt_file(bright_dir, tmp_path, capsys):
  with ScriptedChatServer(lambda req: "expanded") as server:
    argv = ["--data", bright_dir, "--tasks", "biology", "--out", str(tmp_path / "rw"), "--backend", "openai",
            "--backend-model", "m", "--base-url", server.base_url, "--max-tokens", "100"]
    rewrite.main(argv + ["--prompt-file", _write(tmp_path, 'user = "Q: {query}\\n"\n')])
    assert last_user_message(server.requests[0]).startswith("Q: ")
    assert last_user_message(server.requests[0]).endswith("Keep your whole answer within 100 tokens.\n")
    rewrite.main(argv)  # our wording: new keys, new requests
    assert len(server.requests) == 6
    with pytest.raises(SystemExit):
      rewrite.main(argv + ["--prompt-file", _write(tmp_path, 'user = "{doc}"\n')])
  assert "unknown placeholder" in capsys.readouterr().err


def test_bright_rewriting_takes_a_prompt_file(bright_dir, tmp_path, capsys):
  from reasonir_jax.eval import bright
  with ScriptedChatServer(lambda req: "expanded") as server:
    argv = ["--retriever", "bm25", "--data", bright_dir, "--tasks", "biology", "--rewrite-backend",
            "openai", "--rewrite-backend-model", "m", "--base-url", server.base_url,
            "--rewrite-max-tokens", "50"]
    bright.main(argv + ["--out", str(tmp_path / "a"),
                        "--rewrite-prompt-file", _write(tmp_path, 'user = "Q: {query}\\n"\n')])
    assert last_user_message(server.requests[0]).startswith("Q: ")
    assert last_user_message(server.requests[0]).endswith("within 50 tokens.\n")
    with pytest.raises(SystemExit):  # a bad file fails before any request
      bright.main(argv + ["--out", str(tmp_path / "b"),
                          "--rewrite-prompt-file", _write(tmp_path, 'user = "{doc}"\n')])
    assert "unknown placeholder" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bright.main(["--retriever", "bm25", "--data", bright_dir, "--tasks", "biology", "--out",
                 str(tmp_path / "c"), "--rewrite-prompt-file", _write(tmp_path, 'user = "{query}"\n')])
  assert "needs a rewriting backend" in capsys.readouterr().err


# ---------------------------------------------------------------- the scaling sweep

ANSWER_WORDS = ("heart rate adrenaline exercise cardiac output recovery oxygen debt " * 20).split()


def _budgeted_answer(request):
  """A rewrite of 180 words, cut (finish_reason=length) at the request's budget in words."""
  budget = request["max_tokens"]
  if budget < len(ANSWER_WORDS):
    return ("length", " ".join(ANSWER_WORDS[:budget]))
  return " ".join(ANSWER_WORDS)


def test_scaling_sweep_on_the_shipped_sample(tmp_path, tokenizer_dir):
  out = tmp_path / "sweep"
  with ScriptedChatServer(_budgeted_answer) as server:
    rows = scaling.main(["--out", str(out), "--tasks", "biology", "--budgets", "64,16,256", "--retriever", "bm25",
                         "--tokenizer", tokenizer_dir, "--backend", "openai", "--backend-model", "m",
                         "--base-url", server.base_url])
    assert len(server.requests) == 3 * 20  # 20 sample queries per budget
    assert sorted({r["max_tokens"] for r in server.requests}) == [16, 64, 256]
  assert [r["label"] for r in rows] == ["original", "16", "64", "256"]
  words = [r["words"] for r in rows[1:]]
  tokens = [r["tokens"] for r in rows[1:]]
  assert words == [16, 64, 180] and tokens[0] < tokens[1] < tokens[2]  # longer budget, longer query
  assert [r["cut"] for r in rows] == [0, 20, 20, 0] and all(r["failed"] == 0 for r in rows)
  assert all(0 <= r["ndcg@10"] <= 1 and set(r["tasks"]) == {"biology"} for r in rows)
  saved = json.loads((out / "scaling.json").read_text())
  assert saved["rows"] == rows and saved["tasks"] == ["biology"]
  table = (out / "scaling.md").read_text().splitlines()
  assert table[0].startswith("| budget | mean words | mean tokens | cut | failed | biology |")
  assert [line.split(" | ")[0] for line in table[2:6]] == ["| original", "| 16", "| 64", "| 256"]
  assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert os.path.isfile(out / "budget_64" / "biology.jsonl") and os.path.isfile(out / "budget_64" / "biology.run")
  assert os.path.isfile(out / "budget_64" / "cache" / "biology.jsonl")


def test_scaling_budgets_flag_errors_name_the_flag(tmp_path, capsys):
  with pytest.raises(SystemExit):
    scaling.main(["--out", str(tmp_path), "--budgets", "64,x", "--retriever", "bm25", "--backend", "openai",
                  "--backend-model", "m", "--base-url", "http://127.0.0.1:9/v1"])
  assert "--budgets '64,x'" in capsys.readouterr().err


def test_scaling_scores_dense_runs_through_the_bright_cache(bright_dir, tmp_path, bow_encoder):
  """The dense branch: eval/bright.py's cached corpus embeddings, in the --cache-dtype asked for."""
  import types

  import numpy as np

  from reasonir_jax.eval import bright_data
  args = types.SimpleNamespace(retriever="dense", max_length=64, batch_size=8, cache_dir=str(tmp_path / "emb"),
                               top_k=10, cache_dtype="float16", protocol="reference")
  examples = bright_data.load_queries(bright_dir, "biology")
  doc_ids, docs = bright_data.load_documents(bright_dir, "biology", False)
  encoder = bow_encoder()
  ndcg = scaling.score(args, encoder, "m", "biology", examples, doc_ids, docs, str(tmp_path / "b.run"))
  assert 0 < ndcg <= 1 and os.path.isfile(tmp_path / "b.run")
  (entry,) = os.listdir(tmp_path / "emb")
  assert np.load(tmp_path / "emb" / entry / "chunk_00000.npy").dtype == np.float16
  scaling.score(args, encoder, "m", "biology", examples, doc_ids, docs, str(tmp_path / "b.run"))
  assert encoder.texts_encoded == len(docs) + 2 * len(examples)  # the corpus once, the queries per call
