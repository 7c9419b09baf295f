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


# ---- encoding for BRIGHT at scale -------------------------------------------------------------
def test_tasks_sharing_a_corpus_share_one_cache_entry(tmp_path, bow_encoder):
  """aops and theoremqa_questions ship the same documents: the second task encodes nothing."""
  import os

  from reasonir_jax.eval import bright
  ids, docs = ["p1", "p2", "p3"], ["sum of angles", "modular inverse", "prime count"]
  first, second = bow_encoder(), bow_encoder()
  kw = dict(max_length=64, batch_size=4, long_documents=False, cache_dir=str(tmp_path))
  a = bright.corpus_embeddings(first, "m", "aops", ids, docs, **kw)
  b = bright.corpus_embeddings(second, "m", "theoremqa_questions", ids, docs, **kw)
  assert first.texts_encoded == 3 and second.texts_encoded == 0
  assert len(os.listdir(tmp_path)) == 1
  np.testing.assert_array_equal(a.to_array(), b.to_array())
  assert a[0:3].dtype == np.float32  # float32 storage by default, as the reference keeps them
  other = bow_encoder()
  bright.corpus_embeddings(other, "m", "aops", ids, docs[:2] + ["another text"], **kw)
  assert other.texts_encoded == 3  # different content, different entry


def test_fp16_cache_ranks_like_float32():
  from reasonir_jax.eval import cache as cache_mod
  rng = np.random.default_rng(1)
  c = rng.standard_normal((300, 32)).astype(np.float32)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  q = c[:7] + 0.3 * rng.standard_normal((7, 32)).astype(np.float32)
  s32, i32 = retrieval.exact_top_k(q, c, 5)
  s16, i16 = retrieval.exact_top_k(q, c.astype(np.float16), 5)
  np.testing.assert_allclose(s16, s32, atol=5e-3)
  assert (i16[:, 0] == i32[:, 0]).all()
  with pytest.raises(ValueError, match="--cache-dtype 'int8': choose float32 or float16"):
    cache_mod.EmbeddingCache("x", {}, storage_dtype="int8")


def test_cache_dtype_is_part_of_the_entry(tmp_path, bow_encoder, caplog):
  """float32 by default (4 bytes x dim per text), float16 on request (2 bytes x dim); an entry of
  one dtype is never read for the other, and an older float16 entry loads with float16."""
  import logging
  import os

  from reasonir_jax.eval import bright
  from reasonir_jax.eval import cache as cache_mod
  ids, docs = [f"d{i}" for i in range(10)], [f"text number {i}" for i in range(10)]
  kw = dict(max_length=64, batch_size=4, long_documents=False, cache_dir=str(tmp_path), chunk_size=10)
  half = bow_encoder()
  e16 = bright.corpus_embeddings(half, "m", "biology", ids, docs, cache_dtype="float16", **kw)
  with caplog.at_level(logging.INFO, logger="reasonir_jax.eval.cache"):
    full = bow_encoder()
    e32 = bright.corpus_embeddings(full, "m", "biology", ids, docs, **kw)
  assert full.texts_encoded == 10  # the float16 entry is not reused for float32 ...
  assert "--cache-dtype float16 reuses that one" in caplog.text  # ... and the log says how to reuse it
  assert (e16[0:10].dtype, e32[0:10].dtype) == (np.float16, np.float32)
  again = bow_encoder()
  bright.corpus_embeddings(again, "m", "biology", ids, docs, cache_dtype="float16", **kw)
  assert again.texts_encoded == 0  # the float16 entry still loads
  dirs = sorted(os.listdir(tmp_path))
  sizes = {d: os.path.getsize(tmp_path / d / "chunk_00000.npy") for d in dirs}
  payload = sorted(sizes.values())
  assert payload[1] - payload[0] == 10 * 64 * 2  # 4 x dim vs 2 x dim bytes per text (same header)
  # A chunk of the wrong dtype (copied in by hand) is an error that says how to rebuild.
  d32 = [d for d in dirs if sizes[d] == payload[1]][0]
  np.save(tmp_path / d32 / "chunk_00000.npy", np.zeros((10, 64), np.float16))
  with pytest.raises(ValueError, match="holds float16, but this entry stores float32: delete .* to rebuild"):
    bright.corpus_embeddings(bow_encoder(), "m", "biology", ids, docs, **kw)
  assert cache_mod.DEFAULT_STORAGE_DTYPE == "float32"


def test_auto_mesh_is_data_parallel_when_weights_fit(tiny_model_dir):
  from reasonir_jax.eval import encode_plan
  import transformers
  n = sum(p.numel() for p in transformers.AutoModel.from_pretrained(tiny_model_dir).parameters())
  assert encode_plan.safetensors_parameter_count(tiny_model_dir) == n
  gib = 1 << 30
  assert encode_plan.auto_mesh_shape(8_030_000_000, 2, 95 * gib) == "-1,1,1"  # 8B bf16 on a 96 GB chip
  assert encode_plan.auto_mesh_shape(8_030_000_000, 2, 16 * gib) == "1,-1,1"  # v5e: 16 GB, shard it
  assert encode_plan.auto_mesh_shape(None, 2, 16 * gib) == "1,-1,1"
  assert encode_plan.resolve_mesh("auto", tiny_model_dir, "float32") == "-1,1,1"  # CPU: fits
  assert encode_plan.resolve_mesh("2,4,1", tiny_model_dir, "float32") == "2,4,1"


def test_projected_wall_time_counts_a_shared_corpus_once():
  from reasonir_jax.eval import encode_plan
  sizes = encode_plan.BRIGHT_CORPUS_SIZES
  assert len(sizes) == 12 and sizes["aops"] == sizes["theoremqa_questions"] == 188_177
  per_task, total = encode_plan.projected_seconds(100.0)
  assert per_task["theoremqa_questions"] == 0.0 and per_task["aops"] == 1881.77
  assert total == pytest.approx((sum(sizes.values()) - 188_177) / 100.0)
  text = encode_plan.format_projection(100.0, "8 x TPU v5p")
  assert "8 x TPU v5p" in text and "leetcode" in text and "shared corpus" in text
  meter = encode_plan.EncodeMeter()
  for n, secs in ((10, 100.0), (200, 2.0), (200, 2.0)):  # the first call pays the compilations
    meter.calls.append((n, secs))
  assert meter.rate() == 100.0


def test_dense_run_prints_projection_on_data_parallel_mesh(bright_dir, tiny_model_dir, tmp_path, capsys,
                                                           caplog):
  import logging

  from reasonir_jax.eval import bright, encode_plan
  caplog.set_level(logging.INFO)
  encode_plan.METER.calls.clear()
  bright.main(["--model", tiny_model_dir, "--data", bright_dir, "--tasks", "biology", "--dtype", "float32",
               "--max-length", "64", "--batch-size", "8", "--cache-dir", str(tmp_path / "c"),
               "--out", str(tmp_path / "o")])
  out = capsys.readouterr().out
  assert "Projected corpus encoding for all 12 BRIGHT tasks on 8 x cpu" in out and "total" in out
  assert "encoder mesh: {'data': 8, 'fsdp': 1, 'tensor': 1}" in caplog.text
