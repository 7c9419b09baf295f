"""The train state (step, fp32 master parameters, optimiser state, RNG) and its shardings."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # nnx.State of the encoder's Params (param_dtype, fp32 by default)
  opt_state: Any  # optax state; moments sharded like the params
  rng: jax.Array  # uint32[2] raw PRNG key, split once per step


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def expand_shardings(prefix_shardings, abstract_tree):
  """A sharding tree with one leaf per array leaf of `abstract_tree` (nnx Variables included)."""
  return jax.tree.map(lambda sh, sub: jax.tree.map(lambda _: sh, sub), prefix_shardings, abstract_tree)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, param_shardings, mesh):
  """Moments take their parameter's sharding; counters and the like are replicated."""
  return optax.tree_map_params(tx, lambda _, sh: sh, abstract_opt_state, param_shardings,
                               transform_non_params=lambda _: replicated(mesh))


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the given shardings (for AOT lowering and checkpoint restore)."""
  return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                      abstract_tree, shardings)


def zero_step(mesh: Mesh) -> jax.Array:
  return jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh))


def initial_rng(seed: int, mesh: Mesh) -> jax.Array:
  return jax.device_put(jax.random.PRNGKey(seed), replicated(mesh))
