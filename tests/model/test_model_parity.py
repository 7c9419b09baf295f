"""The JAX encoder matches transformers' LlamaModel made bidirectional, and Qwen3Model both
bidirectional and causal (fp32, tiny configs); Qwen3 imports sharded with the same numbers."""
import numpy as np
import pytest
import torch



def _jax_from_torch(hf_model, tmp_path, **overrides):
  from reasonir_jax.hf import load_hf
  hf_model.save_pretrained(str(tmp_path))
  return load_hf(str(tmp_path), show_progress=False, param_dtype="float32", dtype="float32",
                 **overrides)


def _torch_forward(hf_model, ids, mask):
  from reasonir_jax.hf.torch_reference import key_padding_mask
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=key_padding_mask(torch.tensor(mask), torch.float32),
                   output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states]


def _inputs(seed=0, batch=3, length=12, vocab=512):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # right padding
  mask[-1, length - 2:] = 0
  ids[mask == 0] = 2
  return ids, mask


@pytest.mark.parametrize("kv_heads,rope", [(4, "llama3"), (2, "llama3"), (1, "default")])
def test_matches_transformers_per_layer(tmp_path, hf_model_factory, kv_heads, rope):
  hf = hf_model_factory(seed=kv_heads, rope=rope, num_key_value_heads=kv_heads)
  model, cfg = _jax_from_torch(hf, tmp_path, scan_layers=True, remat_policy="none")
  assert cfg.num_kv_heads == kv_heads and cfg.rope_type == rope
  ids, mask = _inputs(seed=kv_heads)
  ref = _torch_forward(hf, ids, mask)
  out, hidden = model(ids, mask, output_hidden_states=True)
  # HF lists embeddings, layers 1..N-1, then the final-norm output.
  assert len(ref) == len(hidden) == cfg.num_layers + 1
  for i in range(cfg.num_layers):
    np.testing.assert_allclose(np.asarray(hidden[i]), ref[i], atol=1e-4, rtol=0,
                               err_msg=f"hidden state {i}")
  keep = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out)[keep], ref[-1][keep], atol=1e-4, rtol=0)

  # Pooled embeddings match the PyTorch mean-pool + normalise.
  from reasonir_jax.model import mean_pool
  pool = mask.copy()
  pool[:, :3] = 0
  ours = np.asarray(mean_pool(out, pool))
  h = torch.tensor(ref[-1]) * torch.tensor(pool)[..., None]
  ref_emb = torch.nn.functional.normalize(h.sum(1) / torch.tensor(pool).sum(1, keepdim=True), dim=-1)
  np.testing.assert_allclose(ours, ref_emb.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_reference_and_ours_are_bidirectional(tmp_path, hf_model_factory):
  hf = hf_model_factory(seed=5)
  model, _ = _jax_from_torch(hf, tmp_path, scan_layers=False, remat_policy="none")
  ids = np.random.RandomState(1).randint(3, 512, (1, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  changed = ids.copy()
  changed[0, -1] = 3 if ids[0, -1] != 3 else 4
  with torch.no_grad():  # no padding: the case where transformers silently goes causal
    r0 = hf(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state[0, 0]
    r1 = hf(input_ids=torch.tensor(changed, dtype=torch.long)).last_hidden_state[0, 0]
  assert (r0 - r1).abs().max() > 1e-3, "the PyTorch reference is causal"
  o0 = np.asarray(model(ids, mask))[0, 0]
  o1 = np.asarray(model(changed, mask))[0, 0]
  assert np.abs(o0 - o1).max() > 1e-3, "our encoder is causal"
  np.testing.assert_allclose(o0, r0.numpy(), atol=1e-4)
  np.testing.assert_allclose(o1, r1.numpy(), atol=1e-4)


@pytest.mark.slow
def test_scan_and_remat_switches_give_same_numbers_and_grads(hf_dir):
  import jax.numpy as jnp
  from flax import nnx
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import embed
  ids, mask = _inputs(seed=3, batch=2, length=10)
  pool = mask.copy()
  pool[:, :2] = 0

  def loss(model):
    emb = embed(model, ids, mask, pool)
    return jnp.sum(emb * jnp.linspace(-1.0, 1.0, emb.shape[-1]))

  results = {}
  for scan, remat in [(True, "none"), (False, "full"), (True, "dots"), (True, "dots_no_batch")]:
    model, _ = load_hf(hf_dir, show_progress=False, param_dtype="float32", dtype="float32",
                       scan_layers=scan, remat_policy=remat)
    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    results[(scan, remat)] = (float(value), np.asarray(grads["embed_tokens"][...]),
                              np.asarray(grads["final_norm"]["scale"][...]))
  base = results[(True, "none")]
  assert np.abs(base[1]).max() > 0
  for key, (value, g_embed, g_norm) in results.items():
    assert abs(value - base[0]) < 1e-5, key
    np.testing.assert_allclose(g_embed, base[1], rtol=1e-4, atol=1e-5, err_msg=str(key))
    np.testing.assert_allclose(g_norm, base[2], rtol=1e-4, atol=1e-5, err_msg=str(key))


def test_padding_invariance(hf_dir):
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import embed
  model, _ = load_hf(hf_dir, show_progress=False, param_dtype="float32", dtype="float32")
  rng = np.random.RandomState(7)
  a = rng.randint(3, 512, 6)
  b = rng.randint(3, 512, 15)
  ids = np.full((2, 16), 2, np.int32)
  mask = np.zeros((2, 16), np.int32)
  ids[0, :6], mask[0, :6] = a, 1
  ids[1, :15], mask[1, :15] = b, 1
  pool = mask.copy()
  pool[:, 0] = 0
  together = np.asarray(embed(model, ids, mask, pool))
  alone = np.asarray(embed(model, ids[:1, :6], mask[:1, :6], pool[:1, :6]))
  np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
  # Changing the other row's content changes nothing for row 0.
  ids2 = ids.copy()
  ids2[1, :15] = rng.randint(3, 512, 15)
  again = np.asarray(embed(model, ids2, mask, pool))
  np.testing.assert_allclose(again[0], together[0], atol=1e-6)


def test_empty_pool_mask_gives_zeros_not_nan():
  import jax.numpy as jnp
  from reasonir_jax.model import mean_pool
  hidden = jnp.ones((2, 4, 8))
  pool = jnp.array([[0, 0, 0, 0], [0, 1, 1, 0]])
  emb = np.asarray(mean_pool(hidden, pool))
  assert np.all(emb[0] == 0) and np.all(np.isfinite(emb))
  np.testing.assert_allclose(np.linalg.norm(emb[1]), 1.0, atol=1e-6)


def test_query_chunked_attention_matches_full(hf_dir, monkeypatch):
  import jax
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import attention
  model, _ = load_hf(hf_dir, show_progress=False, param_dtype="float32", dtype="float32")
  ids, mask = _inputs(seed=11, batch=2, length=12)
  full = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
  monkeypatch.setattr(attention, "ATTN_QUERY_CHUNK", 4)  # 12 tokens -> 3 query chunks
  chunked = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
  np.testing.assert_allclose(chunked, full, atol=1e-5)


def test_scan_switch_keeps_the_random_init():
  """A seed gives the same starting weights with scanned and unrolled layers."""
  import jax
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig
  cfg = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=4,
             num_kv_heads=2, head_dim=4, param_dtype="float32", dtype="float32")
  scanned = nnx.to_pure_dict(nnx.state(LlamaEncoder(ModelConfig(scan_layers=True, **cfg),
                                                    rngs=nnx.Rngs(7))))
  unrolled = nnx.to_pure_dict(nnx.state(LlamaEncoder(ModelConfig(scan_layers=False, **cfg),
                                                     rngs=nnx.Rngs(7))))
  np.testing.assert_array_equal(scanned["embed_tokens"], unrolled["embed_tokens"])
  assert sorted(unrolled["layers"]) == [0, 1, 2]
  for i in range(3):
    layer = jax.tree.map(lambda a: a[i], scanned["layers"])
    jax.tree.map(np.testing.assert_array_equal, layer, unrolled["layers"][i])
    assert not np.array_equal(unrolled["layers"][i]["attn"]["q_proj"],
                              unrolled["layers"][(i + 1) % 3]["attn"]["q_proj"])


def _torch_hidden(hf_model, ids, mask, causal):
  from reasonir_jax.hf.torch_reference import key_padding_mask, make_bidirectional
  import copy
  model = hf_model if causal else make_bidirectional(copy.deepcopy(hf_model))
  mask_t = torch.tensor(mask)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=mask_t if causal else key_padding_mask(mask_t, torch.float32),
                output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("tied,kv_heads,scan", [(False, 2, True), (True, 1, False)])
def test_matches_transformers_qwen3_per_layer(tmp_path, qwen3_dir_factory, causal, tied,
                                               kv_heads, scan):
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import mean_pool
  hf, src = qwen3_dir_factory(str(tmp_path / "qwen3"), seed=kv_heads, tie_word_embeddings=tied,
                              num_key_value_heads=kv_heads)
  # Untied, the checkpoint holds an LM head, which the encoder skips.
  from reasonir_jax.hf.load import CheckpointIndex
  assert ("lm_head.weight" in CheckpointIndex(src).ignored) != tied
  model, cfg = load_hf(src, show_progress=False, param_dtype="float32", dtype="float32",
                       scan_layers=scan, remat_policy="none", causal=causal)
  assert (cfg.model_type, cfg.qk_norm, cfg.tie_word_embeddings) == ("qwen3", True, tied)
  assert cfg.rope_theta == 1e6 and cfg.rope_type == "default" and cfg.head_dim == 16
  ids, mask = _inputs(seed=kv_heads, vocab=2048)
  ref = _torch_hidden(hf.model, ids, mask, causal)
  out, hidden = model(ids, mask, output_hidden_states=True)
  keep = mask.astype(bool)
  errors = [np.abs(np.asarray(hidden[i])[keep] - ref[i][keep]).max()
            for i in range(cfg.num_layers)]
  errors.append(np.abs(np.asarray(out)[keep] - ref[-1][keep]).max())
  assert max(errors) < 1e-5, errors
  # Mean pooling after a 3-token prefix, and the last token: both against PyTorch.
  last = mask.sum(1) - 1
  for pool in (np.where(np.arange(12)[None] >= 3, mask, 0),
               np.eye(12, dtype=np.int32)[last]):
    ours = np.asarray(mean_pool(out, pool))
    h = torch.tensor(ref[-1]) * torch.tensor(pool)[..., None]
    want = torch.nn.functional.normalize(h.sum(1) / torch.tensor(pool).sum(1, keepdim=True), dim=-1)
    np.testing.assert_allclose(ours, want.numpy(), atol=1e-5, rtol=0)


def test_qwen3_sharded_import_gives_the_same_numbers(tmp_path, qwen3_dir_factory):
  import jax
  from reasonir_jax import sharding as shd
  from reasonir_jax.configs.base import SHARDING_RULES
  from reasonir_jax.hf import load_hf
  from reasonir_jax.model import embed
  _, src = qwen3_dir_factory(str(tmp_path / "src"), seed=6)
  ids, mask = _inputs(seed=6, batch=8, vocab=2048)
  pool = np.where(np.arange(12)[None] >= 2, mask, 0)
  kw = dict(show_progress=False, param_dtype="float32", dtype="float32", remat_policy="none",
            causal=True)
  plain, _ = load_hf(src, **kw)
  want = np.asarray(embed(plain, ids, mask, pool))
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  sharded, _ = load_hf(src, mesh=mesh, **kw)
  q_norm = sharded.layers.attn.q_norm.scale[...]
  assert q_norm.sharding.is_equivalent_to(
      shd.named_sharding(mesh, SHARDING_RULES, (None, None), q_norm.shape), q_norm.ndim)
  embed_tokens = sharded.embed_tokens[...]
  assert len(embed_tokens.sharding.device_set) == 8 and not embed_tokens.sharding.is_fully_replicated
  got = np.asarray(jax.jit(embed)(sharded, ids, mask, pool))
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
