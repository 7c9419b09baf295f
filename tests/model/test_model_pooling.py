"""Mean pooling and L2 normalisation: a text with no pooled token gives a zero embedding with a
finite (zero) gradient on the padded and the packed paths, and every other text's embedding is
the plain formula's, bitwise."""
import numpy as np

import jax
import jax.numpy as jnp

from reasonir_jax.model.pooling import NORM_EPS, mean_pool, segment_mean_pool


def _plain_mean_pool(hidden_bld, pool_bl):
  """The formula before the empty-text guard: mean over pooled tokens / max(norm, eps)."""
  mask = pool_bl.astype(jnp.float32)
  s = jnp.einsum("bld,bl->bd", hidden_bld.astype(jnp.float32), mask,
                 precision=jax.lax.Precision.HIGHEST)
  mean = s / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), NORM_EPS)


def _numpy_embedding(h_ld, pooled_l):
  m = np.asarray(h_ld, np.float64)[np.asarray(pooled_l, bool)].mean(axis=0)
  return m / np.linalg.norm(m)


def _hidden_and_mask(seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)
  pool = np.zeros((4, 6), np.int32)
  pool[0, 2:6] = 1
  pool[1, 2:3] = 1
  pool[3, 1:5] = 1  # row 2: a text with no token after its prefix
  return hidden, jnp.asarray(pool)


def test_mean_pool_empty_text_is_zero_with_finite_gradient_and_others_unchanged():
  hidden, pool = _hidden_and_mask()
  emb = np.asarray(mean_pool(hidden, pool))
  np.testing.assert_array_equal(emb[2], 0.0)
  np.testing.assert_array_equal(emb[[0, 1, 3]], np.asarray(_plain_mean_pool(hidden, pool))[[0, 1, 3]])
  for i in (0, 1, 3):
    np.testing.assert_allclose(emb[i], _numpy_embedding(hidden[i], pool[i]), rtol=1e-6, atol=1e-7)
  w = jnp.asarray(np.random.default_rng(1).normal(size=emb.shape), jnp.float32)
  grad = np.asarray(jax.grad(lambda h: jnp.sum(mean_pool(h, pool) * w))(hidden))
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(grad[2], 0.0)
  assert np.abs(grad[0]).max() > 0
  # The unguarded formula is what produced NaN gradients (0/0 in the norm's backward).
  old = np.asarray(jax.grad(lambda h: jnp.sum(_plain_mean_pool(h, pool) * w))(hidden))
  assert np.isnan(old).any()


def test_segment_mean_pool_empty_and_absent_texts_have_finite_gradients():
  hidden, _ = _hidden_and_mask()
  ids = -np.ones((2, 6), np.int32)
  ids[0, 1:4], ids[0, 5] = 0, 1  # text 2 is in the rows but has no pooled token; text 3 absent
  ids[1, 2:6] = 4
  hidden = hidden[:2]
  ids = jnp.asarray(ids)
  emb = np.asarray(segment_mean_pool(hidden, ids, 5))
  np.testing.assert_array_equal(emb[[2, 3]], 0.0)
  for text, (row, cols) in {0: (0, [1, 2, 3]), 1: (0, [5]), 4: (1, [2, 3, 4, 5])}.items():
    pooled = np.zeros(6, bool)
    pooled[cols] = True
    np.testing.assert_allclose(emb[text], _numpy_embedding(hidden[row], pooled), rtol=1e-6, atol=1e-7)
  w = jnp.asarray(np.random.default_rng(2).normal(size=emb.shape), jnp.float32)
  grad = np.asarray(jax.grad(lambda h: jnp.sum(segment_mean_pool(h, ids, 5) * w))(hidden))
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_model_gradients_finite_with_an_empty_text_padded_and_packed():
  """The tiny encoder, a batch where one passage has no text token: loss and every parameter
  gradient finite on both paths, and both paths give the same embeddings."""
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig, embed, embed_packed
  from reasonir_jax.packing import pack_padded
  from reasonir_jax.training.loss import contrastive_loss
  from reasonir_jax.training.synthetic import random_batch

  cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8, dtype="float32",
                    param_dtype="float32", scan_layers=False, remat_policy="none",
                    attention="xla")
  model = LlamaEncoder(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = random_batch(4, 2, 8, 10, vocab=64, seed=3)
  passage = batch["passage"]
  passage["attention_mask"][5, 3:] = 0  # passage 5: BOS + prefix only, no text token
  passage["pool_mask"][5] = 0
  passage["input_ids"][5, 3:] = 2
  packed = {"query": pack_padded(batch["query"], 2, 16), "passage": pack_padded(passage, 4, 20)}

  def loss(params, q_emb_fn, p_emb_fn):
    m = nnx.merge(graphdef, params)
    p_emb = p_emb_fn(m)
    return contrastive_loss(q_emb_fn(m), p_emb, temperature=0.05, group_size=2)[0], p_emb

  def padded(side):
    return lambda m: embed(m, *(jnp.asarray(side[k]) for k in ("input_ids", "attention_mask",
                                                                 "pool_mask")))

  def packed_fn(side, n):
    return lambda m: embed_packed(m, *(jnp.asarray(side[k]) for k in
                                       ("input_ids", "segment_ids", "positions", "pool_ids")), n)

  paths = {"padded": (padded(batch["query"]), padded(passage)),
           "packed": (packed_fn(packed["query"], 4), packed_fn(packed["passage"], 8))}
  embs = {}
  for name, (q_fn, p_fn) in paths.items():
    (value, p_emb), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                    static_argnums=(1, 2))(params, q_fn, p_fn)
    assert np.isfinite(float(value)), name
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      assert np.isfinite(np.asarray(g)).all(), (name, jax.tree_util.keystr(path))
    embs[name] = np.asarray(p_emb)
    np.testing.assert_array_equal(embs[name][5], 0.0)
  np.testing.assert_allclose(embs["packed"], embs["padded"], rtol=1e-5, atol=1e-6)
