"""Rotary position embeddings in the Hugging Face layout (rotate-half), with Llama-3 scaling.

HF Llama q/k weights are stored for the rotate-half layout, so they import without a
permutation. `rope_type="default"` is plain RoPE; "llama3" rescales the low frequencies
(factor, low/high_freq_factor, original_max_position_embeddings), as transformers does.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(cfg) -> np.ndarray:
  """[head_dim // 2] float32 inverse frequencies, computed in float32 like transformers."""
  dim = cfg.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
  if cfg.rope_type == "default":
    return inv_freq
  factor = cfg.rope_factor
  low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  old_len = cfg.rope_original_max_position_embeddings
  low_freq_wavelen = old_len / low
  high_freq_wavelen = old_len / high
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(cfg, length: int, dtype, positions_bl: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables: [length, head_dim] for positions 0..length-1 (right padding), or
  [b, length, head_dim] for per-token positions (packed rows restart at 0 for every text)."""
  inv_freq = jnp.asarray(inverse_frequencies(cfg))
  if positions_bl is None:
    pos = jnp.arange(length, dtype=jnp.float32)
  else:
    pos = positions_bl.astype(jnp.float32)
  freqs_lf = pos[..., None] * inv_freq
  emb_lh = jnp.concatenate([freqs_lf, freqs_lf], axis=-1)
  return jnp.cos(emb_lh).astype(dtype), jnp.sin(emb_lh).astype(dtype)


def apply_rope(x_btnh: jax.Array, cos_th: jax.Array, sin_th: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1]. The tables are [t, h]
  (shared by the batch) or [b, t, h] (per-token positions)."""
  half = x_btnh.shape[-1] // 2
  x1, x2 = x_btnh[..., :half], x_btnh[..., half:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  if cos_th.ndim == 2:
    cos_th, sin_th = cos_th[None], sin_th[None]
  cos = cos_th[:, :, None, :]
  sin = sin_th[:, :, None, :]
  return x_btnh * cos + rotated * sin
