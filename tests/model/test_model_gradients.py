"""Gradients: the hand-written attention backward and the whole encoder against references."""
import numpy as np
import pytest
import torch


def _reference_attend(q_btkgh, k_bskh, v_bskh, key_mask_bs):
  """Plain GQA softmax attention left to autodiff, with the same additive key bias."""
  import jax
  import jax.numpy as jnp
  h = q_btkgh.shape[-1]
  s = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh) / np.sqrt(h)
  s = s + jnp.where(key_mask_bs[:, None, None, None, :].astype(bool), 0.0, -1e30)
  return jnp.einsum("bkgts,bskh->btkgh", jax.nn.softmax(s, axis=-1), v_bskh)


@pytest.mark.parametrize("groups", [1, 2])
def test_attention_vjp_matches_autodiff(groups):
  import jax
  import jax.numpy as jnp
  from reasonir_jax.model import attention
  rng = np.random.RandomState(groups)
  b, t, k, h = 3, 10, 2, 8
  q = jnp.asarray(rng.randn(b, t, k, groups, h), jnp.float32)
  kk = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  v = jnp.asarray(rng.randn(b, t, k, h), jnp.float32)
  mask = np.ones((b, t), np.int32)
  mask[1, 6:] = 0
  mask[2, :] = 0  # a fully padded row: uniform weights over the pads, finite gradients
  cot = jnp.asarray(rng.randn(b, t, k, groups, h), jnp.float32)

  def loss(fn):
    return lambda q, kk, v: jnp.sum(fn(q, kk, v) * cot)

  bias = jnp.where(mask != 0, 0.0, -1e30)
  ours = jax.grad(loss(lambda q, kk, v: attention._attend(q, kk, v, bias, jnp.float32)), (0, 1, 2))
  ref = jax.grad(loss(lambda q, kk, v: _reference_attend(q, kk, v, mask)), (0, 1, 2))
  np.testing.assert_allclose(attention._attend(q, kk, v, bias, jnp.float32),
                             _reference_attend(q, kk, v, mask), atol=1e-5)
  for name, a, r in zip(("dq", "dk", "dv"), ours(q, kk, v), ref(q, kk, v)):
    assert np.all(np.isfinite(np.asarray(a))), name
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_encoder_parameter_gradients_match_transformers(tmp_path, hf_model_factory):
  """d(sum of pooled embeddings . w)/d(every weight), ours against PyTorch autograd."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from reasonir_jax.hf import load_hf
  from reasonir_jax.hf.torch_reference import key_padding_mask
  from reasonir_jax.model import embed

  hf = hf_model_factory(seed=3)
  hf.save_pretrained(str(tmp_path))
  model, cfg = load_hf(str(tmp_path), show_progress=False, param_dtype="float32", dtype="float32",
                       scan_layers=False, remat_policy="none")
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 512, (3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  ids[mask == 0] = 2
  w = rng.randn(3, cfg.hidden_size).astype(np.float32)

  graphdef, params = nnx.split(model, nnx.Param)

  def loss(params):
    emb = embed(nnx.merge(graphdef, params), ids, mask, mask)
    return jnp.sum(emb * w)

  grads = jax.grad(loss)(params)

  hf.zero_grad(set_to_none=True)
  m = torch.tensor(mask)
  hidden = hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=key_padding_mask(m, torch.float32)).last_hidden_state
  pool = m.float()[..., None]
  emb = torch.nn.functional.normalize((hidden * pool).sum(1) / pool.sum(1), dim=-1, eps=1e-6)
  (emb * torch.tensor(w)).sum().backward()

  # Our names -> torch tensors, through the same export the HF writer uses.
  from reasonir_jax.hf import save_hf
  grad_model = nnx.merge(graphdef, grads)
  out = tmp_path / "grads"
  save_hf(grad_model, cfg, str(out), show_progress=False)
  from safetensors.numpy import load_file
  ours = load_file(str(out / "model.safetensors"))
  ref = {name: p.grad.numpy() for name, p in hf.named_parameters()}
  assert set(ref) <= set(ours), set(ref) - set(ours)
  for name, g in ref.items():
    scale = max(np.abs(g).max(), 1e-3)
    np.testing.assert_allclose(ours[name] / scale, g / scale, atol=2e-4, err_msg=name)
