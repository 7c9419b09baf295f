"""Packed training batches give the padded batch's loss and gradients, on every mesh shape the
step tests use, with and without GradCache; the host pipeline packs with config.data.packing."""
import numpy as np
import pytest

import jax

from reasonir_jax import sharding as shd
from reasonir_jax.packing import pack_padded
from reasonir_jax.training.step import build_trainer

MESH_SHAPES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2))
PACKED = ("data.packing=True", "data.query_max_length=16", "data.passage_max_length=24",
          "data.pack_queries_per_row=2", "data.pack_passages_per_row=2", "data.group_size=3")


def _host_params(config):
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig
  return nnx.split(LlamaEncoder(ModelConfig.from_config(config.model), rngs=nnx.Rngs(0)),
                   nnx.Param)[1]


def _packed(batch, trainer):
  rows, cfg = trainer.packed_rows, trainer.config.data
  return {**batch, "query": pack_padded(batch["query"], rows["query"], cfg.query_max_length),
          "passage": pack_padded(batch["passage"], rows["passage"], cfg.passage_max_length)}


def _run(config, batch, params):
  trainer = build_trainer(config, shd.make_mesh(config.mesh))
  if trainer.packing:
    batch = _packed(batch, trainer)
  params = jax.device_put(params, trainer.param_shardings)
  (loss, metrics), grads = jax.jit(trainer.loss_and_grads)(params, trainer.place_batch(batch))
  return float(loss), jax.device_get(metrics), jax.device_get(grads)


def _assert_same(a, b, rtol=1e-5):
  (loss_a, m_a, g_a), (loss_b, m_b, g_b) = a, b
  np.testing.assert_allclose(loss_a, loss_b, rtol=rtol)
  np.testing.assert_allclose(m_a["accuracy"], m_b["accuracy"])
  np.testing.assert_allclose(m_a["pos_sim"], m_b["pos_sim"], rtol=rtol)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(g_a), jax.tree.leaves(g_b)):
    x, y = np.asarray(x), np.asarray(y)
    assert np.abs(y).max() > 0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("shape", MESH_SHAPES)
@pytest.mark.slow
def test_packed_loss_and_grads_equal_padded(make_tiny_config, make_random_batch, shape):
  batch = make_random_batch(16, 3, 8, 12, seed=1)
  params = _host_params(make_tiny_config())
  padded = _run(make_tiny_config(f"mesh.shape={shape}", "data.group_size=3"), batch, params)
  packed = _run(make_tiny_config(f"mesh.shape={shape}", *PACKED), batch, params)
  _assert_same(packed, padded)


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)])
@pytest.mark.slow
def test_packed_grad_cache_equals_padded_full_batch(make_tiny_config, make_random_batch, shape):
  batch = make_random_batch(32, 3, 8, 12, seed=2)
  params = _host_params(make_tiny_config())
  common = (f"mesh.shape={shape}", "train.global_batch_size=32")
  padded = _run(make_tiny_config(*common, "data.group_size=3"), batch, params)
  packed_gc = _run(make_tiny_config(*common, *PACKED, "train.grad_cache_chunk=16"), batch, params)
  _assert_same(packed_gc, padded)


def test_packed_rows_that_cannot_chunk_are_a_clear_error(make_tiny_config):
  cfg = make_tiny_config("mesh.shape=(8,1,1)", *PACKED, "train.grad_cache_chunk=8")
  with pytest.raises(ValueError, match="pack_queries_per_row"):
    build_trainer(cfg, shd.make_mesh(cfg.mesh))
  cfg = make_tiny_config("mesh.shape=(8,1,1)", *PACKED[:-1], "data.pack_passages_per_row=5")
  with pytest.raises(ValueError, match="pack_passages_per_row"):
    build_trainer(cfg, shd.make_mesh(cfg.mesh))


def test_host_pipeline_packs_every_text_and_counts_cuts(make_tiny_config):
  from reasonir_jax.data.pipeline import make_host_iterator
  lengths = ("data.group_size=2", "data.query_max_length=256", "data.passage_max_length=256")
  packed_cfg = make_tiny_config("data.packing=True", *lengths, "data.pack_queries_per_row=2",
                                "data.pack_passages_per_row=2")
  it = make_host_iterator(packed_cfg, prefetch=0)
  padded = make_host_iterator(make_tiny_config(*lengths), prefetch=0)
  batch, ref = next(it), next(padded)
  assert batch["query"]["input_ids"].shape == (8, 256)
  assert batch["passage"]["input_ids"].shape == (16, 256)
  for side, n in (("query", 16), ("passage", 32)):
    got, want = batch[side], ref[side]
    ids = got["pool_ids"]
    assert sorted(set(ids[ids >= 0].tolist())) == list(range(n))  # every text, once
    for i in (0, n - 1):  # the same tokens as the padded row
      row, col = np.nonzero(ids == i)
      seg = got["segment_ids"][row[0], col[0]]
      tokens = got["input_ids"][row[0]][got["segment_ids"][row[0]] == seg]
      np.testing.assert_array_equal(tokens, want["input_ids"][i][want["attention_mask"][i] == 1])
  stats = it.stats()
  assert stats["packing_overflow_batches"] == 0 and stats["packing_cut_tokens"] == 0
  assert stats["packing_tokens"] == sum(int(ref[s]["attention_mask"].sum()) for s in ("query", "passage"))

  # A passage budget far too small: the longest passages are cut (counted), nothing dropped.
  tight_cfg = make_tiny_config("data.packing=True", *lengths[:2], "data.passage_max_length=64",
                               "data.pack_queries_per_row=2", "data.pack_passages_per_row=4")
  tight = make_host_iterator(tight_cfg, prefetch=0)
  batch = next(tight)
  assert batch["passage"]["input_ids"].shape == (8, 64)
  ids = batch["passage"]["pool_ids"]
  assert sorted(set(ids[ids >= 0].tolist())) == list(range(32))
  stats = tight.stats()
  assert stats["packing_overflow_batches"] == 1 and stats["packing_cut_texts"] > 0
  assert stats["packing_tokens"] == int((batch["query"]["segment_ids"] > 0).sum() +
                                        (batch["passage"]["segment_ids"] > 0).sum())


@pytest.mark.parametrize("prefetch,workers", [(0, 0), (2, 2)])
def test_packing_counters_resume_exactly(make_tiny_config, prefetch, workers):
  """The packing counters are part of the pipeline state: stopped after 2 batches and restored
  into a new iterator, 3 more batches give the counters of 5 uninterrupted ones (also when
  worker threads tokenize ahead of delivery)."""
  from reasonir_jax.data.pipeline import make_host_iterator
  # A tight passage budget, so some batches are cut and every counter moves.
  cfg = make_tiny_config("data.packing=True", "data.group_size=2", "data.query_max_length=256",
                         "data.passage_max_length=64", "data.pack_queries_per_row=2",
                         "data.pack_passages_per_row=4")

  def run(it, n):
    batches = [next(it) for _ in range(n)]
    return batches, it.get_state(), it.stats()

  straight = make_host_iterator(cfg, prefetch=prefetch, num_workers=workers)
  want_batches, _, want = run(straight, 5)
  first = make_host_iterator(cfg, prefetch=prefetch, num_workers=workers)
  _, state, stats_2 = run(first, 2)
  assert stats_2["packing_tokens"] > 0
  assert 0 < stats_2["packing_slots"] < want["packing_slots"]
  resumed = make_host_iterator(cfg, prefetch=prefetch, num_workers=workers)
  resumed.set_state(state)
  got_batches, _, got = run(resumed, 3)
  for it in (straight, first, resumed):
    getattr(it, "close", lambda: None)()
  assert {k: v for k, v in got.items() if k.startswith("packing_")} == \
      {k: v for k, v in want.items() if k.startswith("packing_")}
  assert want["packing_overflow_batches"] > 0 and want["packing_cut_tokens"] > 0
  np.testing.assert_array_equal(got_batches[-1]["passage"]["input_ids"],
                                want_batches[-1]["passage"]["input_ids"])


def test_packed_grad_cache_keeps_no_per_chunk_copy_of_the_embeddings(make_tiny_config,
                                                                      make_random_batch):
  # Each packed chunk yields all N embeddings; a [C, N, D] stack of them (or of their
  # gradient) grows with the batch times the chunk count: ~4 GiB per chip at 8B.
  cfg = make_tiny_config("mesh.shape=(2,4,1)", "train.global_batch_size=32", *PACKED,
                         "train.grad_cache_chunk=16")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  batch = trainer.place_batch(_packed(make_random_batch(32, 3, 8, 12, seed=2), trainer))
  params = jax.device_put(_host_params(cfg), trainer.param_shardings)
  text = str(jax.make_jaxpr(trainer.loss_and_grads)(params, batch))
  d = cfg.model.hidden_size
  for chunks, texts in ((32 // 16, 32), (32 * 3 // 16, 32 * 3)):  # queries, passages
    assert f"[{chunks},{texts},{d}]" not in text
  assert f"[{texts},{d}]" in text  # the summed embeddings themselves are there


# Qwen3-Embedding's recipe: causal attention, last-token pooling (the template only decides the
# tokens, which the random batch stands for), on a Qwen3 base (q/k norms).
LAST_TOKEN = ("model.model_type=qwen3", "model.template=qwen3_embedding", "model.causal=True",
              "model.pooling=last_token")


def _last_token(batch):
  """The batch with each text pooled at its last token, as PromptTokenizer pools "last_token"."""
  out = {**batch}
  for side in ("query", "passage"):
    mask = batch[side]["attention_mask"]
    pool = np.zeros_like(mask)
    pool[np.arange(len(mask)), mask.sum(axis=1) - 1] = 1
    out[side] = {**batch[side], "pool_mask": pool}
  return out


@pytest.mark.parametrize("shape,chunk", [((1, 8, 1), 0), ((2, 2, 2), 0), ((2, 4, 1), 16)])
@pytest.mark.slow
def test_causal_last_token_packed_equals_padded(make_tiny_config, make_random_batch, shape,
                                                chunk):
  # A packed text attends causally within its own segment only and pools its own last token:
  # anything else (another text's keys, the row's last token) changes the loss and gradients.
  batch = _last_token(make_random_batch(32, 3, 8, 12, seed=3))
  common = (f"mesh.shape={shape}", "train.global_batch_size=32", *LAST_TOKEN)
  params = _host_params(make_tiny_config(*common))
  padded = _run(make_tiny_config(*common, "data.group_size=3"), batch, params)
  packed = _run(make_tiny_config(*common, *PACKED, f"train.grad_cache_chunk={chunk}"), batch,
                params)
  _assert_same(packed, padded)
  if shape == (1, 8, 1):  # the recipe is in effect: bidirectional mean pooling differs
    mean = _run(make_tiny_config(*common[:2], "model.model_type=qwen3", "data.group_size=3"),
                make_random_batch(32, 3, 8, 12, seed=3), params)
    assert abs(mean[0] - padded[0]) > 1e-3
