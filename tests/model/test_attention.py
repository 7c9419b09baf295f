"""Attention backends: the splash kernel (Pallas interpret mode), the cuDNN path's masking and the
XLA path against a plain reference, in values and gradients, with padding, fully padded rows,
several segments per row and GQA."""
import numpy as np
import pytest


def _inputs(groups, packed, seed=0):
  import jax.numpy as jnp
  rng = np.random.RandomState(seed)
  # 128 tokens: one splash tile; kv heads 2 so GQA 4 has 8 query heads.
  b, t, k, h = 3, 128, 2, 32
  q = jnp.asarray(rng.randn(b, t, k * groups, h), jnp.float32)
  kk = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  v = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  ids = np.zeros((b, t), np.int32)
  if packed:
    ids[0, :40], ids[0, 40:90], ids[0, 90:120] = 1, 2, 3  # three texts, then padding
    ids[1, :] = 1  # one text filling the row
  else:
    ids[0, :100] = 1
    ids[1, :] = 1
  # Row 2 stays fully padded: finite, and it must not disturb the other rows.
  # No cotangent at padding queries, as in training (pooling ignores them): a query that sees
  # no key has uniform weights that are constant in k, whose gradient each backend rounds
  # differently.
  cot = rng.randn(b, t, k * groups, h) * (ids != 0)[:, :, None, None]
  cot = jnp.asarray(cot, jnp.float32)
  return q, kk, v, jnp.asarray(ids), cot


def _value_and_grads(fn, q, kk, v, cot):
  import jax
  import jax.numpy as jnp
  out = fn(q, kk, v)
  grads = jax.grad(lambda q, kk, v: jnp.sum(fn(q, kk, v) * cot), (0, 1, 2))(q, kk, v)
  return [np.asarray(out)] + [np.asarray(g) for g in grads]


def _check_same(ours, ref, ids):
  real = np.asarray(ids) != 0
  for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
    assert np.all(np.isfinite(a)), name
    # Outputs and dq at real queries; dk, dv at every key (pads get ~0 from both).
    a_cmp, r_cmp = (a[real], r[real]) if name in ("out", "dq") else (a, r)
    np.testing.assert_allclose(a_cmp, r_cmp, atol=2e-5, rtol=2e-4, err_msg=name)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("groups", [1, 4])
def test_splash_interpret_matches_xla(groups, packed):
  from reasonir_jax.model.attention import attention
  q, kk, v, ids, cot = _inputs(groups, packed)
  q_ids = ids if packed else None

  def run(impl, **kw):
    return lambda q, kk, v: attention(q, kk, v, q_ids, ids, implementation=impl, **kw)

  _check_same(_value_and_grads(run("splash", interpret=True), q, kk, v, cot),
              _value_and_grads(run("xla"), q, kk, v, cot), ids)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("groups", [1, 4])
def test_xla_and_cudnn_masking_match_reference(groups, packed):
  """The XLA path (hand-written backward) and the cuDNN path's masks (run through
  jax.nn.dot_product_attention's XLA implementation: no GPU here) against autodiff."""
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, cot = _inputs(groups, packed, seed=1)
  q_ids = ids if packed else None
  ref = _value_and_grads(lambda q, kk, v: attn.reference_attention(q, kk, v, q_ids, ids),
                         q, kk, v, cot)
  xla = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, q_ids, ids, implementation="xla"), q, kk, v, cot)
  _check_same(xla, ref, ids)
  cudnn_masks = _value_and_grads(
      lambda q, kk, v: attn._cudnn_attention(q, kk, v, q_ids, ids, implementation="xla"),
      q, kk, v, cot)
  _check_same(cudnn_masks, ref, ids)


def test_segments_do_not_see_each_other():
  """A packed text's outputs equal those of the text alone in its own row."""
  import jax.numpy as jnp
  from reasonir_jax.model.attention import attention
  q, kk, v, ids, _ = _inputs(4, packed=True, seed=2)
  packed = np.asarray(attention(q, kk, v, ids, ids, implementation="xla"))
  alone_ids = jnp.asarray(np.where(np.asarray(ids)[:1] == 2, 1, 0))  # text 2 of row 0 only
  alone = np.asarray(attention(q[:1], kk[:1], v[:1], None, alone_ids, implementation="xla"))
  np.testing.assert_allclose(packed[0, 40:90], alone[0, 40:90], atol=1e-5)


def test_auto_picks_the_backend_of_the_platform():
  from reasonir_jax.model.attention import resolve_implementation
  assert resolve_implementation("auto", "tpu") == "splash"
  assert resolve_implementation("auto", "gpu") == "cudnn"
  assert resolve_implementation("auto", "cpu") == "xla"
  assert resolve_implementation("auto") == "xla"  # the tests run on CPU
  assert resolve_implementation("splash", "cpu") == "splash"
  with pytest.raises(ValueError, match="model.attention"):
    resolve_implementation("flash")


def test_model_config_rejects_an_unknown_attention():
  from reasonir_jax.model.config import ModelConfig
  with pytest.raises(ValueError, match="model.attention='flash'"):
    ModelConfig(attention="flash")
