"""The evaluation's LLM stages through vLLM's OpenAI-compatible server (real vLLM, CPU build; the
session's `vllm_server`), by their command lines: `eval.rewrite` (chat) and `eval.rerank` (raw
prompts on /v1/completions under the reference protocol, chat under ours). A rerun answers from
the answer cache: the engine's own request counter does not move."""
import json
import os

import pytest

from reasonir_jax.eval import metrics, rerank, rewrite
from tests.eval.conftest import BIOLOGY_DOCS, BIOLOGY_EXAMPLES, _write_jsonl
from tests.vllm.vllm_util import require_vllm

RUN = {"b0": {"bio_neuron": 0.9, "bio_mito": 0.5, "bio_dna": 0.4},
       "b1": {"bio_enzyme": 0.7, "bio_photo": 0.6},
       "b2": {"bio_dna": 0.3, "bio_mito": 0.01}}


@pytest.fixture(scope="module")
def bright_jsonl(tmp_path_factory):
  """One BRIGHT task in the JSON-lines layout (the parquet one needs pyarrow, not in .venv-vllm)."""
  root = str(tmp_path_factory.mktemp("bright"))
  _write_jsonl(f"{root}/examples/biology.jsonl", BIOLOGY_EXAMPLES)
  _write_jsonl(f"{root}/documents/biology.jsonl",
               [{"id": k, "content": v} for k, v in BIOLOGY_DOCS.items()])
  return root


def _backend_flags(server):
  return ["--backend", "openai", "--base-url", server.base_url,
          "--backend-model", server.served_name]


def test_rewrite_cli_through_the_server(vllm_server, bright_jsonl, tmp_path):
  require_vllm()
  out = str(tmp_path / "rw")
  argv = ["--data", bright_jsonl, "--tasks", "biology", "--out", out, "--max-tokens", "12",
          *_backend_flags(vllm_server)]
  before = vllm_server.finished_requests()
  rewrite.main(argv)
  assert vllm_server.finished_requests() - before == len(BIOLOGY_EXAMPLES)
  rows = [json.loads(line) for line in open(os.path.join(out, "biology.jsonl"))]
  assert [r["id"] for r in rows] == [e["id"] for e in BIOLOGY_EXAMPLES]
  originals = {e["id"]: e["query"] for e in BIOLOGY_EXAMPLES}
  # The reference keeps a rewrite cut at its budget (a random model is always cut at 12
  # tokens), so every query is replaced by the model's text.
  for r in rows:
    assert r["query"].strip() and r["query"] != originals[r["id"]], r
  cache = [json.loads(line) for line in open(os.path.join(out, "cache", "biology.jsonl"))]
  assert len(cache) == len(rows) and all(c.get("cut") for c in cache)

  after = vllm_server.finished_requests()
  rewrite.main(argv)  # every answer cached: nothing reaches the engine
  assert vllm_server.finished_requests() == after
  assert [json.loads(line) for line in open(os.path.join(out, "biology.jsonl"))] == rows


@pytest.mark.parametrize("protocol_name,max_tokens", [("reference", None), ("ours", "8")])
def test_rerank_cli_through_the_server(vllm_server, bright_jsonl, tmp_path, protocol_name,
                                       max_tokens):
  require_vllm()
  run_dir = str(tmp_path)
  metrics.write_trec_run(os.path.join(run_dir, "biology.run"), RUN)
  argv = ["--run-dir", run_dir, "--data", bright_jsonl, "--tasks", "biology", "--top-k", "2",
          "--protocol", protocol_name, *_backend_flags(vllm_server)]
  argv += ["--max-tokens", max_tokens] if max_tokens else []
  before = vllm_server.finished_requests()
  results = rerank.main(argv)
  pairs = sum(min(2, len(docs)) for docs in RUN.values())
  assert vllm_server.finished_requests() - before == pairs
  judgments = [json.loads(line) for line in
               open(os.path.join(run_dir, "rerank", "biology.judgments.jsonl"))]
  assert len(judgments) == pairs
  for j in judgments:
    if protocol_name == "reference":  # a cut-off answer is parsed as it is, never a failure
      assert not j["answer"].startswith("FAILED"), j
    elif j["answer"].startswith("FAILED"):  # ours: only a cut answer fails (-1, then / 5)
      assert "finish_reason=length" in j["answer"] and j["score"] == pytest.approx(-0.2), j
    assert -1.0 <= j["score"] <= 1.0
    assert j["final"] == pytest.approx(0.5 * j["score"] + 0.5 * j["retriever_score"])
  new = metrics.read_trec_run(os.path.join(run_dir, "rerank", "biology.run"))
  assert {q: set(d) for q, d in new.items()} == {
      q: set(metrics.ranked_ids(docs)[:2]) for q, docs in RUN.items()}  # only the top-k kept
  assert set(results["biology"]) >= {"ndcg@10", "before"}

  after = vllm_server.finished_requests()
  rerank.main(argv)  # every answer cached; ours asks again for the cut ones (failures)
  failed = sum(j["answer"].startswith("FAILED") for j in judgments)
  assert vllm_server.finished_requests() - after == failed
  assert metrics.read_trec_run(os.path.join(run_dir, "rerank", "biology.run")) == new
