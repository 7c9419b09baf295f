"""Mesh construction, logical->mesh rules, and sharded models giving the same numbers."""
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reasonir_jax import sharding as shd
from reasonir_jax.configs.base import SHARDING_RULES


def _mesh_cfg(shape, axes=("data", "fsdp", "tensor")):
  return ml_collections.ConfigDict(dict(shape=shape, axes=axes))


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
  assert len(jax.devices()) == 8
  mesh = shd.make_mesh(_mesh_cfg((2, -1, 1)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match=r"mesh\.shape \(3, 1, 1\).*8"):
    shd.make_mesh(_mesh_cfg((3, 1, 1)))
  with pytest.raises(ValueError, match=r"mesh\.shape \(3, -1, 1\)"):
    shd.make_mesh(_mesh_cfg((3, -1, 1)))
  with pytest.raises(ValueError, match="at most one -1"):
    shd.make_mesh(_mesh_cfg((-1, -1, 1)))


def test_logical_to_spec():
  assert shd.logical_to_spec(("batch", "length"), SHARDING_RULES) == P(("data", "fsdp"), None)
  assert shd.logical_to_spec(("layers", "embed", "heads", "head_dim"), SHARDING_RULES) == \
      P(None, "fsdp", "tensor", None)
  with pytest.raises(ValueError, match="'nope'"):
    shd.logical_to_spec(("nope",), SHARDING_RULES)
  # A dimension the mesh axis does not divide is replicated (2 KV heads on 4-way tensor).
  mesh = shd.make_mesh(_mesh_cfg((2, 1, 4)))
  assert shd.logical_to_spec(("embed", "kv_heads", None), SHARDING_RULES, mesh, (64, 2, 16)) == \
      P("fsdp", None, None)
  assert shd.data_parallel_size(mesh, SHARDING_RULES) == 2


def test_constrain_is_a_noop_without_mesh():
  x = np.ones((4, 3), np.float32)
  assert shd.constrain(x, ("batch", "length")) is x


def test_create_sharded_model_places_params_and_runs():
  from reasonir_jax.model import ModelConfig, embed
  from reasonir_jax.model.sharded import create_sharded_model
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, rope_type="default",
                    dtype="float32", remat_policy="full")
  mesh = shd.make_mesh(_mesh_cfg((2, 2, 2)))
  model = create_sharded_model(cfg, mesh, SHARDING_RULES, seed=0)
  q = model.layers.attn.q_proj[...]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)
  specs = shd.param_shardings(model, mesh, SHARDING_RULES)
  assert specs["embed_tokens"].spec == P("tensor", "fsdp")
  ids = np.arange(32, dtype=np.int32).reshape(4, 8) % 64
  mask = np.ones_like(ids)
  from flax import nnx
  jembed = nnx.jit(embed)
  emb = np.asarray(jembed(model, jax.device_put(ids, shd.batch_sharding(mesh, SHARDING_RULES)),
                         mask, mask))
  # The same parameters on one device, without activation constraints, give the same numbers.
  graphdef, state = nnx.split(model)
  plain = nnx.merge(graphdef, jax.device_get(state))
  plain.set_activation_sharding(None, None)
  np.testing.assert_allclose(np.asarray(jembed(plain, ids, mask, mask)), emb, atol=1e-5)
  assert np.abs(emb).max() > 0


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 1, 4)])
def test_sharded_import_matches_unsharded(hf_dir, shape):
  from reasonir_jax import Encoder
  texts = ["The mitochondria is the powerhouse of the cell.", "Binary search halves.",
           "Plate tectonics explains earthquakes and volcanoes over time.", "x", "café 東京"]
  plain = Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)
  mesh = shd.make_mesh(_mesh_cfg(shape))
  sharded = Encoder.from_pretrained(hf_dir, dtype="float32", mesh=mesh, show_progress=False)
  q = sharded.model.layers.attn.q_proj[...]
  assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
  a = plain.encode(texts, instruction="Given a biology post", batch_size=4, max_length=64)
  b = sharded.encode(texts, instruction="Given a biology post", batch_size=4, max_length=64)
  np.testing.assert_allclose(a, b, atol=2e-5)
