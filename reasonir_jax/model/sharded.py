"""The encoder's abstract (shape-only, sharded) form, building it directly in its sharding, and
moving an existing one into it.

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


def abstract_model(model_cfg, mesh: Mesh | None = None, rules: shd.Rules | None = None, *,
                   filters: tuple = (), device: jax.sharding.Sharding | None = None,
                   seed: int = 0):
  """`nnx.split(model, *filters)` of a LlamaEncoder that holds no memory: (graphdef, state, ...)
  with every Variable's value a jax.ShapeDtypeStruct. With `mesh`, each carries its sharding
  under `rules`; else with `device`, that sharding; else none. The trainer, random init in the
  sharding, checkpoint restore, HF import and the Encoder all start from this one model."""
  if not isinstance(model_cfg, ModelConfig):
    model_cfg = ModelConfig.from_config(model_cfg)
  graphdef, *states = nnx.split(
      nnx.eval_shape(lambda: LlamaEncoder(model_cfg, rngs=nnx.Rngs(seed))), *filters)
  if mesh is not None or device is not None:

    def placed(v):
      sharding = (device if mesh is None else
                  shd.named_sharding(mesh, rules, shd.variable_logical_axes(v), v.shape))
      return v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))

    states = [jax.tree.map(placed, st, is_leaf=lambda x: isinstance(x, nnx.Variable))
              for st in states]
  return (graphdef, *states)


def create_sharded_model(model_cfg, mesh: Mesh, rules: shd.Rules, seed: int = 0) -> LlamaEncoder:
  """A randomly initialised LlamaEncoder whose parameters are created in their sharding
  (no full copy on one device first)."""
  if not isinstance(model_cfg, ModelConfig):
    model_cfg = ModelConfig.from_config(model_cfg)

  def init():
    return LlamaEncoder(model_cfg, rngs=nnx.Rngs(seed))

  graphdef, abstract_state = abstract_model(model_cfg, seed=seed)
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
