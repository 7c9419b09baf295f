"""Mean pooling over the text tokens and L2 normalisation (the ReasonIR embedding)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12


def mean_pool(hidden_bld: jax.Array, pool_mask_bl: jax.Array) -> jax.Array:
  """fp32 mean over tokens where pool_mask is 1, then L2-normalised. An empty text gives zeros."""
  mask_bl = pool_mask_bl.astype(jnp.float32)
  sum_bd = jnp.einsum("bld,bl->bd", hidden_bld.astype(jnp.float32), mask_bl,
                      precision=jax.lax.Precision.HIGHEST)
  count_b1 = jnp.maximum(mask_bl.sum(axis=1, keepdims=True), 1.0)
  mean_bd = sum_bd / count_b1
  norm_b1 = jnp.linalg.norm(mean_bd, axis=-1, keepdims=True)
  return mean_bd / jnp.maximum(norm_b1, NORM_EPS)
