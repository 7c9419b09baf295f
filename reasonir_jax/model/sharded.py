"""Building an encoder directly in its sharding, and moving an existing one into it.

The rules and mesh helpers live in `reasonir_jax.sharding` (which knows nothing of the model);
this module builds the model on top of them, so the imports run one way:
sharding <- model.llama <- model.sharded.
"""
from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from reasonir_jax import sharding as shd
from reasonir_jax.model.config import ModelConfig
from reasonir_jax.model.llama import LlamaEncoder


def create_sharded_model(model_cfg, mesh: Mesh, rules: shd.Rules, seed: int = 0) -> LlamaEncoder:
  """A randomly initialised LlamaEncoder whose parameters are created in their sharding
  (no full copy on one device first)."""
  if not isinstance(model_cfg, ModelConfig):
    model_cfg = ModelConfig.from_config(model_cfg)

  def init():
    return LlamaEncoder(model_cfg, rngs=nnx.Rngs(seed))

  graphdef, abstract_state = nnx.split(nnx.eval_shape(init))
  shardings = shd.param_shardings(abstract_state, mesh, rules)
  # Each device materialises only its own shard of every parameter.
  state = jax.jit(lambda: nnx.state(init()), out_shardings=shardings)()
  model = nnx.merge(graphdef, state)
  model.set_activation_sharding(mesh, rules)
  return model


def shard_model(model: LlamaEncoder, mesh: Mesh, rules: shd.Rules) -> LlamaEncoder:
  """Moves an existing model's parameters into their shardings (in place); returns the model.
  For a model on one process only: on several processes, load straight into the sharding
  (`reasonir_jax.hf.load_hf(..., mesh=)`) instead."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, shd.param_shardings(state, mesh, rules)))
  model.set_activation_sharding(mesh, rules)
  return model
