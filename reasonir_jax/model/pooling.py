"""Mean pooling over the text tokens and L2 normalisation (the ReasonIR embedding).

`mean_pool` pools padded rows (one text per row); `segment_mean_pool` pools packed rows (several
texts per row, reasonir_jax.packing) with a segment sum on device: one [num_texts, d] result, no
loop over texts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12


def _normalise(sum_nd: jax.Array, count_n1: jax.Array) -> jax.Array:
  """mean / ||mean||, and exactly 0 (value and gradient) for a text with no pooled token.

  The norm's gradient is mean / norm, 0/0 at the zero vector, and a NaN there poisons every
  parameter's gradient even when the output is masked. So a zero mean takes a stand-in of ones
  into the norm and the result is chosen by `jnp.where` on both sides of the division. Other
  texts go through the same operations as without the guard (bitwise equal in the tests; no
  eps added).
  """
  mean_nd = sum_nd / jnp.maximum(count_n1, 1.0)
  nonzero_n1 = jnp.sum(mean_nd * mean_nd, axis=-1, keepdims=True) > 0
  safe_nd = jnp.where(nonzero_n1, mean_nd, 1.0)
  norm_n1 = jnp.linalg.norm(safe_nd, axis=-1, keepdims=True)
  return jnp.where(nonzero_n1, safe_nd / jnp.maximum(norm_n1, NORM_EPS), 0.0)


def mean_pool(hidden_bld: jax.Array, pool_mask_bl: jax.Array) -> jax.Array:
  """fp32 mean over tokens where pool_mask is 1, then L2-normalised. An empty text gives zeros
  (with a zero, finite gradient)."""
  mask_bl = pool_mask_bl.astype(jnp.float32)
  sum_bd = jnp.einsum("bld,bl->bd", hidden_bld.astype(jnp.float32), mask_bl,
                      precision=jax.lax.Precision.HIGHEST)
  return _normalise(sum_bd, mask_bl.sum(axis=1, keepdims=True))


def segment_mean_pool(hidden_bld: jax.Array, pool_ids_bl: jax.Array, num_texts: int) -> jax.Array:
  """[num_texts, d] fp32 L2-normalised means of the tokens of each text of packed rows.

  pool_ids_bl holds each pooled token's text index (0..num_texts-1) and -1 for the template
  prefix and padding; a text with no pooled token (or absent from these rows) gives zeros.
  """
  d = hidden_bld.shape[-1]
  ids_x = pool_ids_bl.reshape(-1)
  # -1 goes to an extra segment that is dropped.
  ids_x = jnp.where(ids_x < 0, num_texts, ids_x)
  h_xd = hidden_bld.reshape(-1, d).astype(jnp.float32)
  sum_nd = jax.ops.segment_sum(h_xd, ids_x, num_segments=num_texts + 1)[:num_texts]
  count_n = jax.ops.segment_sum(jnp.ones_like(ids_x, jnp.float32), ids_x,
                                num_segments=num_texts + 1)[:num_texts]
  return _normalise(sum_nd, count_n[:, None])
