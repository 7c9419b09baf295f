"""Attention backends: the splash kernel (Pallas interpret mode), the cuDNN path's masking and the
XLA path against a plain reference, in values and gradients, with padding, fully padded rows,
several segments per row, GQA, bidirectional and causal."""
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


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("groups", [1, 4])
def test_splash_interpret_matches_xla(groups, packed, causal):
  from reasonir_jax.model.attention import attention
  q, kk, v, ids, cot = _inputs(groups, packed)
  q_ids = ids if packed else None

  def run(impl, **kw):
    return lambda q, kk, v: attention(q, kk, v, q_ids, ids, implementation=impl, causal=causal,
                                      **kw)

  _check_same(_value_and_grads(run("splash", interpret=True), q, kk, v, cot),
              _value_and_grads(run("xla"), q, kk, v, cot), ids)


def _emulated_packed_kernel(q, k, v, lengths_bm, offsets_bm, causal=False):
  """What cuDNN's packed layout computes, on CPU: a query attends the keys of the segment
  (offset, length) it lies in; K/V arrive with every query head."""
  import jax.numpy as jnp
  from reasonir_jax.model.attention import reference_attention
  assert k.shape[2] == q.shape[2]
  pos = jnp.arange(q.shape[1])[None, :, None]
  start = offsets_bm[:, None, :-1]
  inside = (lengths_bm[:, None] >= 0) & (pos >= start) & (pos < start + lengths_bm[:, None])
  seg = jnp.where(inside.any(-1), jnp.argmax(inside, -1) + 1, 0)  # 0: in no segment
  return reference_attention(q, k, v, seg, seg, causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("groups", [1, 4])
def test_xla_and_cudnn_masking_match_reference(groups, packed, causal, monkeypatch):
  """The XLA path (hand-written backward) and the cuDNN path's arguments (padded: through
  jax.nn.dot_product_attention's XLA implementation; packed: the packed layout's lengths and
  offsets through an emulation of the kernel; no GPU here) against autodiff."""
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, cot = _inputs(groups, packed, seed=1)
  q_ids = ids if packed else None
  ref = _value_and_grads(lambda q, kk, v: attn.reference_attention(q, kk, v, q_ids, ids, causal),
                         q, kk, v, cot)
  xla = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, q_ids, ids, implementation="xla", causal=causal),
      q, kk, v, cot)
  _check_same(xla, ref, ids)
  monkeypatch.setattr(attn, "_cudnn_packed_kernel", _emulated_packed_kernel)
  monkeypatch.setattr(attn, "_packed_layout_supported", lambda: True)  # as on Hopper
  cudnn_args = _value_and_grads(
      lambda q, kk, v: attn._cudnn_attention(q, kk, v, q_ids, ids, implementation="xla",
                                             max_segments=3, causal=causal),
      q, kk, v, cot)
  _check_same(cudnn_args, ref, ids)
  if causal:  # the causal mask is really applied: it changes the result
    assert not np.allclose(xla[0], _value_and_grads(
        lambda q, kk, v: attn.reference_attention(q, kk, v, q_ids, ids), q, kk, v, cot)[0])


def test_cudnn_padded_rows_pass_key_lengths_not_a_mask(monkeypatch):
  import jax
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, cot = _inputs(4, packed=False, seed=3)
  calls, real = [], jax.nn.dot_product_attention

  def recording(*args, **kwargs):
    calls.append(([a.shape for a in args], dict(kwargs)))
    return real(*args, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  got = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, None, ids, implementation="cudnn"), q, kk, v, cot)
  shapes, kwargs = calls[0]
  assert shapes == [q.shape, kk.shape, v.shape]  # no bias or mask; K/V keep their 2 heads
  assert set(kwargs) == {"key_value_seq_lengths", "implementation", "is_causal"}
  assert kwargs["implementation"] == "cudnn" and kwargs["is_causal"] is False
  # Rows of 100 and 128 real keys; the fully padded row attends its first key (finite).
  np.testing.assert_array_equal(np.asarray(kwargs["key_value_seq_lengths"]), [100, 128, 1])
  ref = _value_and_grads(lambda q, kk, v: attn.reference_attention(q, kk, v, None, ids),
                         q, kk, v, cot)
  _check_same(got, ref, ids)


@pytest.mark.parametrize("max_segments,m", [(3, 4), (None, 128)])
def test_cudnn_packed_rows_pass_segment_lengths_and_offsets(monkeypatch, max_segments, m):
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, cot = _inputs(4, packed=True, seed=4)
  calls = []

  def recording(q, k, v, lengths, offsets, causal):
    calls.append((k.shape, np.asarray(lengths), np.asarray(offsets)))
    return _emulated_packed_kernel(q, k, v, lengths, offsets, causal)

  monkeypatch.setattr(attn, "_cudnn_packed_kernel", recording)
  monkeypatch.setattr(attn, "_packed_layout_supported", lambda: True)  # as on Hopper
  got = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, ids, ids, implementation="cudnn",
                                      max_segments=max_segments), q, kk, v, cot)
  k_shape, lengths, offsets = calls[0]
  assert k_shape == q.shape  # jax 0.10.2's packed GQA offsets bug: K/V get every query head
  assert lengths.shape == (3, m) and offsets.shape == (3, m + 1)
  # Row 0: texts of 40, 50, 30 tokens, then 8 padding tokens as a run of their own.
  # Row 1: one text filling the row; row 2: padding only, one run. Missing entries are -1.
  pad = [-1] * (m - 4)
  np.testing.assert_array_equal(lengths, [[40, 50, 30, 8] + pad, [128, -1, -1, -1] + pad,
                                          [128, -1, -1, -1] + pad])
  np.testing.assert_array_equal(offsets, [[0, 40, 90, 120, -1] + pad, [0, -1, -1, -1, -1] + pad,
                                          [0, -1, -1, -1, -1] + pad])
  ref = _value_and_grads(lambda q, kk, v: attn.reference_attention(q, kk, v, ids, ids),
                         q, kk, v, cot)
  _check_same(got, ref, ids)


def test_cudnn_packed_rows_before_hopper_fall_back_to_a_mask(monkeypatch):
  import jax
  from reasonir_jax.model import attention as attn
  assert not attn._packed_layout_supported()  # CPU: no CUDA backend
  q, kk, v, ids, cot = _inputs(4, packed=True, seed=6)
  calls, real = [], jax.nn.dot_product_attention

  def recording(*args, **kwargs):
    calls.append(kwargs["mask"].shape)
    return real(*args, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  got = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, ids, ids, implementation="cudnn"), q, kk, v, cot)
  assert calls[0] == (3, 1, 128, 128)
  _check_same(got, _value_and_grads(
      lambda q, kk, v: attn.reference_attention(q, kk, v, ids, ids), q, kk, v, cot), ids)


def _shapes_in(jaxpr):
  """Every intermediate shape of a jaxpr and the jaxprs inside its equations."""
  out = []
  for eqn in jaxpr.eqns:
    out += [tuple(getattr(var.aval, "shape", ())) for var in eqn.outvars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _shapes_in(inner)
  return out


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_cudnn_path_builds_no_dense_mask(monkeypatch, packed):
  """Forward and backward of the cuDNN path (the kernels replaced by a stand-in that builds
  nothing) hold no array with two length-t axes: no [b, 1, t, s] mask or bias."""
  import jax
  import jax.numpy as jnp
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, _ = _inputs(4, packed=packed, seed=5)
  t = q.shape[1]
  stand_in = lambda q, k, v, *args, **kwargs: q * jnp.sum(k) * jnp.sum(v)  # noqa: E731
  monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
  monkeypatch.setattr(attn, "_cudnn_packed_kernel", stand_in)
  monkeypatch.setattr(attn, "_packed_layout_supported", lambda: True)  # as on Hopper
  q_ids = ids if packed else None

  def loss(q, kk, v):
    return jnp.sum(attn.attention(q, kk, v, q_ids, ids, implementation="cudnn"))

  shapes = _shapes_in(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, kk, v).jaxpr)
  assert shapes and not [s for s in shapes if s.count(t) >= 2]
  # The check itself sees a dense mask: the old path's [b, 1, t, s] broadcast.
  old = jax.make_jaxpr(lambda ids: attn._segment_mask_bts(ids, ids)[:, None])(ids).jaxpr
  assert [s for s in _shapes_in(old) if s.count(t) >= 2]


def test_packed_models_pass_their_row_bound_to_attention(monkeypatch):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig, embed_packed, llama
  seen = []
  real = llama.attention

  def recording(*args, **kwargs):
    seen.append(kwargs.get("max_segments"))
    return real(*args, **kwargs)

  monkeypatch.setattr(llama, "attention", recording)
  model = LlamaEncoder(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                   num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                                   param_dtype="float32", dtype="float32", scan_layers=False,
                                   remat_policy="none"), rngs=nnx.Rngs(0))
  ids = jnp.asarray([[1, 1, 2, 2, 2, 0]], jnp.int32)
  pos = jnp.asarray([[0, 1, 0, 1, 2, 0]], jnp.int32)
  pool = jnp.asarray([[0, 0, 1, 1, 1, -1]], jnp.int32)
  # Traced only (eval_shape): what reaches attention is decided while tracing.
  jax.eval_shape(lambda: embed_packed(model, ids, ids, pos, pool, 2))  # the call's 2 texts
  jax.eval_shape(lambda: embed_packed(model, ids, ids, pos, pool, 2, max_segments=4))
  jax.eval_shape(lambda: model(ids, ids))  # padded rows: none
  assert seen == [2, 4, None]


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


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_causal_query_chunks_keep_their_place_in_the_row(monkeypatch, packed):
  """Long rows attend in query chunks: each chunk's causal mask starts at its own place."""
  from reasonir_jax.model import attention as attn
  q, kk, v, ids, cot = _inputs(4, packed, seed=3)
  q_ids = ids if packed else None
  ref = _value_and_grads(lambda q, kk, v: attn.reference_attention(q, kk, v, q_ids, ids, True),
                         q, kk, v, cot)
  monkeypatch.setattr(attn, "ATTN_QUERY_CHUNK", 32)  # 4 chunks of the 128-token rows
  chunked = _value_and_grads(
      lambda q, kk, v: attn.attention(q, kk, v, q_ids, ids, implementation="xla", causal=True),
      q, kk, v, cot)
  _check_same(chunked, ref, ids)
