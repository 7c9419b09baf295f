"""Our numpy nDCG@10 / recall@100 equal pytrec_eval (trec_eval) on random runs with many ties."""
import numpy as np
import pytest

from reasonir_jax.eval import metrics


def _random_case(rng, n_queries=40, n_docs=300):
  run, qrels = {}, {}
  for q in range(n_queries):
    qid = f"q{q}"
    docs = rng.choice(n_docs, size=rng.integers(1, 150), replace=False)
    # Coarse scores: many exact ties, which trec_eval breaks by docid descending.
    run[qid] = {f"d{d}": float(rng.integers(0, 5)) / 4 for d in docs}
    rel = rng.choice(n_docs, size=rng.integers(0, 15), replace=False)
    qrels[qid] = {f"d{d}": int(rng.integers(1, 3)) for d in rel}
  qrels["only_in_qrels"] = {"d1": 1}
  run["only_in_run"] = {"d1": 1.0}
  qrels["judged_irrelevant"], run["judged_irrelevant"] = {"d1": 0}, {"d1": 1.0, "d2": 0.5}
  qrels["no_judgments"], run["no_judgments"] = {}, {"d1": 1.0}
  return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval_with_ties(seed):
  pytrec_eval = pytest.importorskip("pytrec_eval")
  run, qrels = _random_case(np.random.default_rng(seed))
  ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
  ours = metrics.per_query_metrics(run, qrels)
  assert set(ours) == set(ref)
  for qid in ref:
    assert ours[qid]["ndcg@10"] == pytest.approx(ref[qid]["ndcg_cut_10"], abs=1e-9), qid
    assert ours[qid]["recall@100"] == pytest.approx(ref[qid]["recall_100"], abs=1e-9), qid
  mean = metrics.evaluate(run, qrels)
  assert mean["ndcg@10"] == pytest.approx(np.mean([r["ndcg_cut_10"] for r in ref.values()]))


def test_ties_break_by_docid_descending():
  assert metrics.ranked_ids({"a": 1.0, "c": 1.0, "b": 2.0, "d": 0.5}) == ["b", "c", "a", "d"]
  # Only "a" is relevant: with the tie broken towards "c" it sits at rank 2.
  assert metrics.ndcg_at_k(metrics.ranked_ids({"a": 1.0, "c": 1.0}), {"a": 1}, 10) == pytest.approx(
      1 / np.log2(3))


def test_run_file_round_trip(tmp_path):
  run = {"q1": {"d1": 0.5, "d2": 0.75}, "q2": {"d3": -1.0}}
  path = str(tmp_path / "x.run")
  metrics.write_trec_run(path, run)
  lines = open(path).read().splitlines()
  assert lines[0].split()[:4] == ["q1", "Q0", "d2", "1"]
  assert metrics.read_trec_run(path) == run


def test_public_metrics_layout_and_values():
  pytest.importorskip("pytrec_eval")
  run, qrels = _random_case(np.random.default_rng(3))
  out = metrics.public_metrics(run, qrels)
  ks = (1, 5, 10, 25, 50, 100)
  assert list(out) == ([f"NDCG@{k}" for k in ks] + [f"MAP@{k}" for k in ks] + [f"Recall@{k}" for k in ks]
                       + [f"P@{k}" for k in ks] + ["MRR"])  # BRIGHT's calculate_retrieval_metrics keys
  ours = metrics.evaluate(run, qrels)
  assert out["NDCG@10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)
  assert out["Recall@100"] == pytest.approx(ours["recall@100"], abs=1e-5)
  assert all(round(v, 5) == v for v in out.values())
  # Hand-computed: one query, the relevant document at rank 2 of 3.
  small = metrics.public_metrics({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"b": 1}})
  assert small["MRR"] == 0.5 and small["P@1"] == 0.0 and small["P@5"] == 0.2 and small["MAP@10"] == 0.5
  assert small["NDCG@5"] == pytest.approx(round(1 / np.log2(3), 5))


def test_qrels_and_score_json(tmp_path):
  import json
  metrics.write_qrels(str(tmp_path / "t.qrels"), {"q1": {"d1": 1, "d2": 1}})
  assert open(tmp_path / "t.qrels").read().splitlines() == ["q1 0 d1 1", "q1 0 d2 1"]
  metrics.write_score_json(str(tmp_path / "score.json"), {"q1": {"a": 0.1, "b": 0.9}})
  saved = json.load(open(tmp_path / "score.json"))
  assert list(saved["q1"]) == ["b", "a"] and saved["q1"]["b"] == 0.9
