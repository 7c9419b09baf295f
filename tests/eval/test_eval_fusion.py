"""Rank fusion (eval/fusion.py) on hand-computed cases, and hybrid / multi-query retrieval through
`eval.bright` (flag errors, identical query sets, the outputs)."""
import json
import os

import pytest

from reasonir_jax.eval import bright, fusion, metrics


def test_min_max_hand_computed():
  assert fusion.min_max({"a": 3.0, "b": 1.0, "c": 2.0}) == {"a": 1.0, "b": 0.0, "c": 0.5}
  # All equal (a tie throughout, or one document): every document is the list's best.
  assert fusion.min_max({"a": 0.2, "b": 0.2}) == {"a": 1.0, "b": 1.0}
  assert fusion.min_max({"a": -4.0}) == {"a": 1.0}
  assert fusion.min_max({}) == {}


def test_score_fusion_hand_computed():
  dense = {"q": {"a": 0.9, "b": 0.7, "c": 0.5}}  # normalised: a 1, b 0.5, c 0
  bm25 = {"q": {"b": 20.0, "d": 10.0}}  # normalised: b 1, d 0
  fused = fusion.fuse([dense, bm25], [0.75, 0.25], "score")
  # a only in dense, d only in BM25: the other list gives them 0.
  assert fused == {"q": pytest.approx({"a": 0.75, "b": 0.75 * 0.5 + 0.25, "c": 0.0, "d": 0.0})}
  # c and d tie at 0 and are cut in trec_eval's order (docid descending): d before c.
  assert list(fusion.fuse([dense, bm25], [0.75, 0.25], "score", top_k=3)["q"]) == ["a", "b", "d"]


def test_rrf_hand_computed():
  a = {"q": {"x": 2.0, "y": 1.0, "z": 1.0}}  # ranks: x 1, then the tie in docid descending order: z 2, y 3
  b = {"q": {"y": 5.0}}
  fused = fusion.fuse([a, b], [1.0, 1.0], "rrf", rrf_k=60)
  assert fused["q"] == pytest.approx({"x": 1 / 61, "z": 1 / 62, "y": 1 / 63 + 1 / 61})
  assert metrics.ranked_ids(fused["q"]) == ["y", "x", "z"]
  weighted = fusion.fuse([a, b], [0.5, 2.0], "rrf", rrf_k=0)
  assert weighted["q"] == pytest.approx({"x": 0.5, "z": 0.25, "y": 0.5 / 3 + 2.0})


def test_empty_lists_and_missing_queries():
  # A query with an empty list in one run and absent from the other keeps an empty ranking.
  assert fusion.fuse([{"q": {}}, {}], [0.5, 0.5], "score") == {"q": {}}
  assert fusion.fuse([{"q": {}}, {}], [0.5, 0.5], "rrf") == {"q": {}}
  # A query only one run has is ranked by that run alone.
  fused = fusion.fuse([{"q": {"a": 1.0, "b": 0.0}}, {"r": {"c": 3.0}}], [0.5, 0.5], "score")
  assert fused == {"q": {"a": 0.5, "b": 0.0}, "r": {"c": 0.5}}


@pytest.mark.parametrize("kwargs,match", [
    ({"weights": [0.5]}, "2 runs but 1 weights"),
    ({"weights": [0.5, -1.0]}, "finite and >= 0"),
    ({"weights": [0.5, float("nan")]}, "finite and >= 0"),
    ({"method": "borda"}, "choose from score, rrf"),
    ({"method": "rrf", "rrf_k": -1}, "rrf k -1"),
])
def test_fuse_refuses_bad_arguments(kwargs, match):
  args = {"weights": [0.5, 0.5], "method": "score"} | kwargs
  with pytest.raises(ValueError, match=match):
    fusion.fuse([{"q": {"a": 1.0}}, {"q": {"a": 1.0}}], args.pop("weights"), args.pop("method"), **args)


def test_identical_runs_fuse_to_the_single_run():
  run = {"q": {"a": 0.3, "b": 0.9, "c": 0.3, "d": 0.1}}
  for method in fusion.METHODS:
    fused = fusion.fuse([run, run, run], [1 / 3] * 3, method)
    assert metrics.ranked_ids(fused["q"]) == metrics.ranked_ids(run["q"])
  assert fusion.fuse([run] * 3, [1 / 3] * 3, "score")["q"] == pytest.approx(fusion.min_max(run["q"]))


@pytest.mark.parametrize("flags,match", [
    (["--dense-weight", "0.5"], "nothing is fused"),
    (["--fusion", "rrf"], "nothing is fused"),
    (["--retriever", "hybrid", "--dense-weight", "1.5"], "--dense-weight 1.5: must be between 0 and 1"),
    (["--queries", "original,original", "--dense-weight", "0.5", "--retriever", "bm25"],
     "--dense-weight needs --retriever hybrid"),
    (["--retriever", "hybrid", "--rrf-k", "10"], "--rrf-k needs --fusion rrf"),
    (["--retriever", "hybrid", "--fusion", "rrf", "--rrf-k", "-1"], "--rrf-k -1: must be >= 0"),
    (["--retriever", "hybrid", "--fusion-depth", "0"], "--fusion-depth 0: must be >= 1"),
    (["--queries", "original,,gpt4_reason", "--retriever", "bm25"], "an empty name"),
    (["--retriever", "bm25", "--top-k", "0"], "--top-k 0"),
    (["--retriever", "hybrid"], "--model is required with --retriever hybrid"),
])
def test_fusion_flags_are_checked(bright_dir, tmp_path, capsys, flags, match):
  with pytest.raises(SystemExit):
    bright.main(["--data", bright_dir, "--out", str(tmp_path / "o"), "--tasks", "biology"] + flags)
  assert match in capsys.readouterr().err


def test_unknown_fusion_method_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit):
    bright.main(["--out", str(tmp_path), "--retriever", "hybrid", "--fusion", "borda"])
  assert "invalid choice: 'borda'" in capsys.readouterr().err


def test_plan_weights():
  args = bright.build_parser().parse_args(["--out", "x", "--retriever", "hybrid", "--dense-weight", "0.75",
                                           "--queries", "original,gpt4_reason", "--fusion-depth", "2000"])
  plan = bright.parse_plan(args)
  assert plan.retrievers == ("dense", "bm25") and plan.depth == 2000 and plan.method == "score"
  assert plan.weights() == [0.375, 0.125, 0.375, 0.125]  # (query set, retriever) order


def _bm25(bright_dir, out, *flags, tasks="biology,leetcode"):
  return bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(out), "--tasks", tasks, *flags])


def test_multi_query_fusion_of_identical_queries_equals_the_single_query(bright_dir, tmp_path):
  single = _bm25(bright_dir, tmp_path / "single")
  for method in fusion.METHODS:
    fused = _bm25(bright_dir, tmp_path / method, "--queries", "original,original,original", "--fusion", method)
    for task in ("biology", "leetcode"):
      assert fused[task] == pytest.approx(single[task]), (method, task)
      a = metrics.read_trec_run(os.path.join(tmp_path / "single", f"{task}.run"))
      b = metrics.read_trec_run(os.path.join(tmp_path / method, f"{task}.run"))
      assert {q: metrics.ranked_ids(d) for q, d in a.items()} == {q: metrics.ranked_ids(d) for q, d in b.items()}


def test_multi_query_outputs(bright_dir, tmp_path):
  out = tmp_path / "multi"
  results = _bm25(bright_dir, out, "--queries", "original,gpt4_reason", "--fusion", "rrf", "--fusion-depth", "3",
                  "--top-k", "2", tasks="biology")
  settings = json.load(open(out / "fusion.json"))
  assert settings["query_sets"] == ["original", "gpt4_reason"] and settings["rrf_k"] == 60
  assert settings["list_weights"] == [0.5, 0.5] and settings["depth"] == 3
  score = json.load(open(out / "biology_bm25_long_False" / "score.json"))
  assert set(score) == {"b0", "b1", "b2"} and all(len(d) == 2 for d in score.values())
  assert "bio_dup" not in score["b0"]  # excluded before fusion, so never back in
  per_query = json.load(open(out / "per_query" / "biology.json"))
  assert set(per_query) == {"b0", "b1", "b2"}
  assert results["biology"]["ndcg@10"] == pytest.approx(sum(m["ndcg@10"] for m in per_query.values()) / 3)


def test_hybrid_end_to_end(bright_dir, tmp_path, monkeypatch, bow_encoder):
  monkeypatch.setattr(bright, "load_encoder", lambda *a: bow_encoder())
  monkeypatch.setattr(bright.cache, "model_fingerprint", lambda model: "bow")
  common = ["--model", "bow", "--data", bright_dir, "--tasks", "biology", "--cache-dir", str(tmp_path / "cache")]
  lists = {}
  for retriever in ("dense", "bm25"):
    bright.main(common + ["--retriever", retriever, "--out", str(tmp_path / retriever)])
    lists[retriever] = metrics.read_trec_run(str(tmp_path / retriever / "biology.run"))
  bright.main(common + ["--retriever", "hybrid", "--dense-weight", "0.75", "--out", str(tmp_path / "h")])
  hybrid = json.load(open(tmp_path / "h" / "biology_hybrid_long_False" / "score.json"))
  expected = fusion.fuse([lists["dense"], lists["bm25"]], [0.75, 0.25], "score")
  # The run files hold 8 decimals; the fused scores are computed from the full-precision lists.
  assert {q: pytest.approx(d, abs=1e-6) for q, d in expected.items()} == hybrid
  assert "bio_dup" not in hybrid["b0"]
