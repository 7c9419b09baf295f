"""Blocked exact top-k equals brute force; excluded ids never appear; "N/A" means none."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from reasonir_jax.eval import bright_data, retrieval


def _brute_force(q, c, k, excluded):
  s = q @ c.T
  for i, e in enumerate(excluded):
    s[i, e] = -np.inf
  idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize("use_mesh", [False, True])
def test_blocked_top_k_equals_brute_force_and_masks_excluded(use_mesh):
  rng = np.random.default_rng(0)
  q = rng.standard_normal((13, 16)).astype(np.float32)
  c = rng.standard_normal((203, 16)).astype(np.float32)  # 203: blocks do not divide it
  excluded = [list(rng.choice(203, size=rng.integers(0, 9), replace=False)) for _ in range(13)]
  # Exclude each query's true best document too, so masking is exercised at the top.
  for i in range(13):
    excluded[i].append(int(np.argmax(q[i] @ c.T)))
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp")) if use_mesh else None
  s, idx = retrieval.exact_top_k(q, c, 10, block_size=48, query_block=5, excluded=excluded, mesh=mesh)
  ref_s, ref_idx = _brute_force(q, c, 10, excluded)
  np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(idx, ref_idx)
  for i in range(13):
    assert not set(idx[i]) & set(excluded[i])


def test_fewer_allowed_documents_than_k():
  c = np.eye(4, dtype=np.float32)
  s, idx = retrieval.exact_top_k(c[:1], c, 4, excluded=[[1, 2]])
  assert list(idx[0][:2]) == [0, 3] and list(idx[0][2:]) == [-1, -1]
  assert np.all(np.isneginf(s[0][2:]))
  run = retrieval.to_run(["q"], ["a", "b", "c", "d"], s, idx)
  assert set(run["q"]) == {"a", "d"}


def test_na_excluded_ids_mean_none(bright_dir):
  examples = {e.id: e for e in bright_data.load_examples(bright_dir, "biology")}
  assert examples["b1"].excluded_ids == []
  assert examples["b0"].excluded_ids == ["bio_dup"]
  run = retrieval.drop_excluded({"b0": {"bio_dup": 3.0, "bio_mito": 2.0}}, {"b0": ["bio_dup"]}, 10)
  assert run == {"b0": {"bio_mito": 2.0}}


def test_missing_file_names_file_and_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"documents.*biology.*examples/<task>-00000-of-00001.parquet"):
    bright_data.load_documents(str(tmp_path), "biology")
  with pytest.raises(ValueError, match="unknown task"):
    bright_data.parse_tasks("biology,chemistry")


def test_query_instructions_are_exact():
  assert bright_data.query_instruction("earth_science") == (
      "Given a earth_science post, retrieve relevant passages that help answer the post")
  assert bright_data.query_instruction("pony") == (
      "Given a pony question, retrieve relevant passages that help answer the question")
  assert bright_data.query_instruction("theoremqa_theorems") == (
      "Given a Math problem, retrieve relevant theorems that help answer the problem")
  assert bright_data.query_instruction("aops") == bright_data.query_instruction("theoremqa_questions")


def test_cli_checks_every_file_before_starting(bright_dir, tmp_path, capsys):
  from reasonir_jax.eval import bright
  with pytest.raises(SystemExit):
    bright.main(["--retriever", "bm25", "--data", bright_dir, "--out", str(tmp_path), "--tasks",
                 "biology,leetcode", "--queries", "gpt4_reason"])
  err = capsys.readouterr().err
  assert "no file for task 'leetcode'" in err and "gpt4_reason" in err
  assert not (tmp_path / "biology.run").exists()
