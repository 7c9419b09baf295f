"""GQA attention over segment ids, bidirectional or causal, with one backend per accelerator.

`attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs, implementation=...)`:
a query attends to every key with its own non-zero segment id (0 = padding), in both directions;
with `causal=True` only to those at or before its own place in the row (a packed text is a
contiguous run, so that is causal within the text). With `q_segment_ids_bt=None` the key ids are
a plain padding mask (non-zero = real key) and every query attends to all real keys of its row:
the unpacked case, which needs only a [b, s] key bias when bidirectional.
Query heads are grouped by the KV head they share (GQA) and K/V are never repeated. A query with
no key to attend to (a fully padded row, or a padding query of a packed row) gets uniform
weights over its row: finite, and ignored by pooling.

Backends (`IMPLEMENTATIONS`, `config.model.attention`):
  xla     fp32 softmax with a hand-written flash-style backward (below); CPU and anywhere.
  splash  the Pallas TPU splash kernel (jax.experimental.pallas.ops.tpu.splash_attention);
          `interpret=True` runs it on CPU (tests).
  cudnn   cuDNN fused attention (NVIDIA GPUs): key lengths for padded rows, the packed layout
          (per-text lengths and offsets) for packed rows; no dense mask, except for packed
          rows before Hopper (no packed layout there).
  auto    splash on TPU, cudnn on GPU, xla otherwise; the platform is that of the active mesh
          (so an AOT compile for a TPU topology on a CPU host picks splash).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from reasonir_jax import sharding
from reasonir_jax.model.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS

# Longer sequences compute XLA attention in query chunks of this size, so the fp32 score tensor
# is [chunk, length] per head rather than [length, length] (e.g. 32k-token evaluation).
ATTN_QUERY_CHUNK = 4096
# -1e30 rather than -inf: a row with no real key stays finite (uniform weights, never NaN).
_MASKED = -1e30
# Splash tiles: 512 is the measured sweet spot on v5p/v6e for head_dim 128 (128 is the
# kernel's default and leaves the MXU half idle); shorter sequences use their full length.
_SPLASH_BLOCK = 512


def resolve_implementation(implementation: str, platform: str | None = None) -> str:
  """`auto` -> the backend for `platform` (default: the active mesh's, else JAX's default)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention={implementation!r} is not one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  if platform is None:
    platform = _platform()
  return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")


def _platform() -> str:
  active = sharding.active_sharding()
  if active is not None:
    return active[0].devices.flat[0].platform
  return jax.default_backend()


def attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
              q_segment_ids_bt: jax.Array | None, kv_segment_ids_bs: jax.Array, *,
              implementation: str = "auto", remat: bool = False,
              interpret: bool = False, max_segments: int | None = None,
              causal: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(h) + mask) v per head -> [b, t, n, h] in q's dtype.

  `remat`: the caller rematerialises the layer (only the xla backend uses it, see its backward).
  `interpret`: run the splash kernel in Pallas interpret mode (CPU tests).
  `max_segments`: at most this many texts in one packed row (static; the cudnn backend sizes
  its packed layout by it, the others ignore it). None: t, always enough, but cuDNN's softmax
  statistics are then [b * t, n, t] fp32 per layer.
  """
  b, t, n, h = q_btnh.shape
  k_heads = k_bskh.shape[2]
  if n % k_heads:
    raise ValueError(f"attention: {n} query heads are not a multiple of {k_heads} kv heads")
  impl = resolve_implementation(implementation)
  if implementation == "auto" and impl == "cudnn" and q_btnh.dtype == jnp.float32:
    impl = "xla"  # cuDNN's fused attention takes bf16/fp16 only
  if impl == "xla":
    return _xla_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs, remat,
                          causal)
  if impl == "splash":
    return _splash_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs,
                             interpret, causal)
  return _cudnn_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs,
                          max_segments=max_segments, causal=causal)


def _segment_mask_bts(q_segment_ids_bt, kv_segment_ids_bs) -> jax.Array:
  """[b, t, s] True where query t may attend key s (same non-zero segment)."""
  q = q_segment_ids_bt[:, :, None]
  kv = kv_segment_ids_bs[:, None, :]
  return (q == kv) & (kv != 0)


def _mask_bts(q_segment_ids_bt, kv_segment_ids_bs, t: int, causal: bool,
              q_start=0) -> jax.Array:
  """[b, t, s] (or [b, 1, s] for a bidirectional unpacked row) True where a query may attend a
  key; the queries are the row's places q_start .. q_start + t - 1."""
  if q_segment_ids_bt is None:
    mask = (kv_segment_ids_bs != 0)[:, None, :]
  else:
    mask = _segment_mask_bts(q_segment_ids_bt, kv_segment_ids_bs)
  if causal:
    s = kv_segment_ids_bs.shape[1]
    mask = mask & (jnp.arange(s)[None, None, :] <= q_start + jnp.arange(t)[None, :, None])
  return mask


# ---------------------------------------------------------------------------------------------
# xla


def _xla_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs, remat,
                   causal: bool = False):
  b, t, n, h = q_btnh.shape
  k_heads = k_bskh.shape[2]
  dt = q_btnh.dtype
  # GQA without repeating K/V: query heads grouped by the KV head they share.
  q_btkgh = q_btnh.reshape(b, t, k_heads, n // k_heads, h)
  chunk = ATTN_QUERY_CHUNK

  def attend(q_btkgh, q_ids_bt, q_start=0):
    mask = _mask_bts(q_ids_bt, kv_segment_ids_bs, q_btkgh.shape[1], causal, q_start)
    if mask.shape[1] == 1:  # one key mask per row: the [b, s] bias
      mask = mask[:, 0]
    bias = jnp.where(mask, 0.0, _MASKED).astype(jnp.float32)
    return _attend(q_btkgh, k_bskh, v_bskh, bias, dt, remat)

  if t > chunk and t % chunk == 0:
    def to_chunks(x):
      return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)
    q_ids = None if q_segment_ids_bt is None else to_chunks(q_segment_ids_bt)
    starts = jnp.arange(t // chunk) * chunk
    out_cbtkgh = jax.lax.map(lambda args: attend(*args), (to_chunks(q_btkgh), q_ids, starts))
    out_btkgh = jnp.moveaxis(out_cbtkgh, 0, 1).reshape(q_btkgh.shape)
  else:
    out_btkgh = attend(q_btkgh, q_segment_ids_bt)
  return out_btkgh.reshape(b, t, n, h)


def _attend(q_btkgh, k_bskh, v_bskh, bias, dtype, remat: bool = False):
  """Softmax attention in fp32; `bias` is [b, s] (one key mask per row) or [b, t, s].

  Queries are laid out [b, k, g*t, h] so that each score/value product is one batched matmul
  per (batch, kv head). -1e30 on masked keys keeps a fully masked row finite (uniform weights
  over its keys, never NaN).
  """
  b, t, k, g, h = q_btkgh.shape
  # Scale q (h times smaller than the scores) rather than the [b, k, x, s] scores.
  q_bkxh = (q_btkgh * (h ** -0.5)).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
  k_bksh = k_bskh.transpose(0, 2, 1, 3)
  v_bksh = v_bskh.transpose(0, 2, 1, 3)
  out_bkxh = _softmax_attention(q_bkxh, k_bksh, v_bksh, bias, remat).astype(dtype)
  return out_bkxh.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _softmax_attention(q_bkxh, k_bksh, v_bksh, bias, remat: bool = False):
  """softmax(q k^T + bias) v, with the flash-attention backward written out.

  The forward keeps only the output and two row statistics, not the [b, k, x, s] weights; the
  backward recomputes the weights (one matmul and one fused exp). Left to autodiff, the softmax
  backward takes several more full passes over the scores (the broadcast row sums and their
  cotangents), which dominate the layer on CPU.
  """
  return _softmax_attention_fwd(q_bkxh, k_bksh, v_bksh, bias, remat)[0]


def _scores(q_bkxh, k_bksh, bias):
  s_bkxs = jnp.einsum("bkxh,bksh->bkxs", q_bkxh, k_bksh, preferred_element_type=jnp.float32)
  if bias.ndim == 2:  # [b, s]: one key mask for every query of the row
    return s_bkxs + bias[:, None, None, :]
  # [b, t, s]: x runs over (g, t), so the same [t, s] mask serves every query head of a group.
  b, k, x, s = s_bkxs.shape
  t = bias.shape[1]
  s_bkgts = s_bkxs.reshape(b, k, x // t, t, s) + bias[:, None, None]
  return s_bkgts.reshape(b, k, x, s)


def _softmax_attention_fwd(q_bkxh, k_bksh, v_bksh, bias, remat):
  del remat  # only the backward needs it
  s_bkxs = _scores(q_bkxh, k_bksh, bias)
  max_bkx1 = jnp.max(s_bkxs, axis=-1, keepdims=True)
  e_bkxs = jnp.exp(s_bkxs - max_bkx1)
  inv_sum_bkx1 = 1.0 / jnp.sum(e_bkxs, axis=-1, keepdims=True)
  # Normalised weights, then the value product: the form XLA:CPU fuses whole for inference
  # (scaling the [x, h] output afterwards instead ran 2x slower at head_dim 64).
  p_bkxs = (e_bkxs * inv_sum_bkx1).astype(v_bksh.dtype)
  out_bkxh = jnp.einsum("bkxs,bksh->bkxh", p_bkxs, v_bksh).astype(q_bkxh.dtype)
  # The row max and 1/sum rather than their log-sum-exp: next to a fully padded row's -1e30
  # max, log(sum) would round away (weights of 1 instead of 1/length in the backward).
  return out_bkxh, (q_bkxh, k_bksh, v_bksh, bias, out_bkxh, max_bkx1, inv_sum_bkx1)


def _softmax_attention_bwd(remat, res, dout_bkxh):
  q_bkxh, k_bksh, v_bksh, bias, out_bkxh, max_bkx1, inv_sum_bkx1 = res
  dt = q_bkxh.dtype
  dout_bkxh = dout_bkxh.astype(dt)
  if remat:
    # Under rematerialisation the layer's forward is re-run just before this; left alone, XLA
    # merges the two score computations and keeps the forward's [b, k, x, s] tensors alive
    # through the backward (+13 GiB per chip for the 8B recipe on v5p-256).
    q_bkxh, k_bksh, bias = jax.lax.optimization_barrier((q_bkxh, k_bksh, bias))
  # Weights and score cotangents are held in the compute dtype, as the forward feeds its
  # weights to the value product: of the [b, k, x, s] tensors only dp is fp32 (on TPU each
  # such tensor is most of a layer's backward memory).
  p_bkxs = (jnp.exp(_scores(q_bkxh, k_bksh, bias) - max_bkx1) * inv_sum_bkx1).astype(dt)
  dp_bkxs = jnp.einsum("bkxh,bksh->bkxs", dout_bkxh, v_bksh, preferred_element_type=jnp.float32)
  # Row sums of p * dp equal those of dout * out (h wide rather than s wide).
  delta_bkx1 = jnp.sum(dout_bkxh.astype(jnp.float32) * out_bkxh.astype(jnp.float32), axis=-1,
                       keepdims=True)
  ds_bkxs = (p_bkxs.astype(jnp.float32) * (dp_bkxs - delta_bkx1)).astype(dt)
  dq_bkxh = jnp.einsum("bkxs,bksh->bkxh", ds_bkxs, k_bksh, preferred_element_type=jnp.float32)
  # dk and dv contract over the queries, the leading dim of both [x, s] and [x, h] operands.
  # Written as dk^T = q^T ds and dv^T = dout^T p, the transposes land on the narrow [x, h]
  # operands and the small [h, s] results: XLA:CPU otherwise runs them as transposed-operand
  # matmuls over the [x, s] tensors, twice as slow as the rest of the attention backward.
  dkt_bkhs = jnp.einsum("bkhx,bkxs->bkhs", jnp.swapaxes(q_bkxh, -1, -2), ds_bkxs,
                        preferred_element_type=jnp.float32)
  dvt_bkhs = jnp.einsum("bkhx,bkxs->bkhs", jnp.swapaxes(dout_bkxh, -1, -2), p_bkxs,
                        preferred_element_type=jnp.float32)
  return (dq_bkxh.astype(dt), jnp.swapaxes(dkt_bkhs, -1, -2).astype(k_bksh.dtype),
          jnp.swapaxes(dvt_bkhs, -1, -2).astype(v_bksh.dtype), jnp.zeros_like(bias))


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


# ---------------------------------------------------------------------------------------------
# splash (Pallas, TPU)


def _splash_segment_ids(q_segment_ids_bt, kv_segment_ids_bs, t):
  """Splash's (q, kv) ids: it lets a query see the keys with an equal id, so padding keys get
  0 and padding queries -1 (they see nothing); unpacked rows give every query id 1."""
  kv = (kv_segment_ids_bs != 0).astype(jnp.int32) if q_segment_ids_bt is None else \
      kv_segment_ids_bs.astype(jnp.int32)
  if q_segment_ids_bt is None:
    q = jnp.ones((kv.shape[0], t), jnp.int32)
  else:
    q = jnp.where(q_segment_ids_bt == 0, -1, q_segment_ids_bt).astype(jnp.int32)
  return q, kv


def _padded_length(length: int) -> int:
  """The kernel's tiles are multiples of 128 lanes: lengths are padded up to a whole tile."""
  tile = 128 if length <= _SPLASH_BLOCK else _SPLASH_BLOCK
  return -(-length // tile) * tile


def _block(padded_length: int) -> int:
  return min(padded_length, _SPLASH_BLOCK)


@functools.lru_cache(maxsize=None)
def _splash_kernel(groups: int, t: int, s: int, interpret: bool, causal: bool = False):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  bq, bkv = _block(t), _block(s)  # t, s: already padded to whole tiles
  blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                         block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                         block_kv_dq=bkv)
  # Causal by place in the (padded) row: padding only ever follows the real tokens.
  head_mask = sa.CausalMask((t, s)) if causal else sa.FullMask((t, s))
  mask = sa.MultiHeadMask([head_mask for _ in range(groups)])
  # One MQA kernel per KV head: its query heads are the group sharing that KV head (GQA with
  # K/V read once per group, never repeated).
  return sa.make_splash_mqa_single_device(mask, block_sizes=blocks, interpret=interpret)


def _splash_local(q_btnh, k_bskh, v_bskh, q_ids_bt, kv_ids_bs, interpret, causal=False):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  b, t, n, h = q_btnh.shape
  s, k_heads = k_bskh.shape[1], k_bskh.shape[2]
  g = n // k_heads
  pt, ps = _padded_length(t), _padded_length(s)
  if (pt, ps) != (t, s):
    # Extra keys get id 0 (no query sees them), extra queries -1 (cut off below).
    def pad(x, length):
      return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    out = _splash_local(pad(q_btnh, pt), pad(k_bskh, ps), pad(v_bskh, ps),
                        jnp.pad(q_ids_bt, [(0, 0), (0, pt - t)], constant_values=-1),
                        pad(kv_ids_bs, ps), interpret, causal)
    return out[:, :t]
  kernel = _splash_kernel(g, t, s, interpret, causal)
  q_bkgth = (q_btnh * (h ** -0.5)).reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4)
  k_bksh = k_bskh.transpose(0, 2, 1, 3)
  v_bksh = v_bskh.transpose(0, 2, 1, 3)

  def per_row(q_kgth, k_ksh, v_ksh, q_ids_t, kv_ids_s):
    ids = sa.SegmentIds(q=q_ids_t, kv=kv_ids_s)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_kgth, k_ksh, v_ksh)

  out_bkgth = jax.vmap(per_row)(q_bkgth, k_bksh, v_bksh, q_ids_bt, kv_ids_bs)
  return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q_btnh.dtype)


def _splash_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs, interpret,
                      causal: bool = False):
  t = q_btnh.shape[1]
  q_ids_bt, kv_ids_bs = _splash_segment_ids(q_segment_ids_bt, kv_segment_ids_bs, t)
  run = functools.partial(_splash_local, interpret=interpret, causal=causal)
  active = sharding.active_sharding()
  if active is None:
    return run(q_btnh, k_bskh, v_bskh, q_ids_bt, kv_ids_bs)
  # A Pallas call is not partitioned by XLA: run it per shard (batch and heads split as the
  # activations are; each shard holds whole sequences, so no communication).
  mesh, rules = active
  batch = sharding.logical_to_spec(("batch",), rules, mesh, q_btnh.shape[:1])[0]
  heads = sharding.logical_to_spec(("act_heads",), rules, mesh, q_btnh.shape[2:3])[0]
  kv_heads = sharding.logical_to_spec(("act_kv_heads",), rules, mesh, k_bskh.shape[2:3])[0]
  if heads != kv_heads:  # e.g. kv heads replicated: the local groups would not line up
    heads = kv_heads = None
  q_spec = PartitionSpec(batch, None, heads, None)
  kv_spec = PartitionSpec(batch, None, kv_heads, None)
  ids_spec = PartitionSpec(batch, None)
  return jax.shard_map(run, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, ids_spec, ids_spec),
                       out_specs=q_spec, check_vma=False)(
                           q_btnh, k_bskh, v_bskh, q_ids_bt, kv_ids_bs)


# ---------------------------------------------------------------------------------------------
# cudnn (NVIDIA GPU)
#
# No [b, 1, t, s] mask or bias: cuDNN turns one into a dense bias that is read in every layer's
# forward and whose gradient it writes in every layer's backward (O(t*s) memory per layer, and a
# slower kernel). Padded rows pass key lengths instead, packed rows cuDNN's packed layout
# (per-segment lengths and offsets).


def _padded_key_lengths(kv_segment_ids_bs) -> jax.Array:
  """[b] int32 real keys per row (padding on the right, as tokenization pads). A fully padded
  row gets 1 (its first key) rather than 0: finite, and nothing pools it."""
  return jnp.maximum(jnp.sum(kv_segment_ids_bs != 0, axis=1), 1).astype(jnp.int32)


def packed_segments(segment_ids_bt, max_segments: int) -> tuple[jax.Array, jax.Array]:
  """(lengths [b, M], offsets [b, M + 1]) of the runs of equal segment id in each row, in
  cuDNN's packed layout (missing entries -1), M = max_segments.

  Packed texts are contiguous runs (reasonir_jax.packing). The padding at a row's end is a run
  of its own, so every token lies in one segment (a padding query attends the padding keys: its
  output is finite and ignored); real texts never see it. Runs past M are not described: callers
  pass M >= the runs of any row (the texts of a row + 1).
  """
  ids = jnp.asarray(segment_ids_bt)
  b, t = ids.shape
  first = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  run = jnp.cumsum(first, axis=1, dtype=jnp.int32) - 1  # 0-based run index of each token
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
  lengths = jnp.zeros((b, max_segments), jnp.int32).at[rows, run].add(1, mode="drop")
  runs = jnp.sum(first, axis=1, keepdims=True)
  lengths = jnp.where(jnp.arange(max_segments)[None] < runs, lengths, -1)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  # Only a run's first token writes its offset (the others aim past the end and are dropped).
  offsets = jnp.full((b, max_segments + 1), -1, jnp.int32).at[
      rows, jnp.where(first & (run < max_segments), run, max_segments + 1)].set(pos, mode="drop")
  return lengths, offsets


def _cudnn_packed_kernel(q_btnh, k_btnh, v_btnh, lengths_bm, offsets_bm, causal: bool = False):
  """cuDNN flash attention on the packed layout (jax 0.10.2 has it only in its cuDNN module; the
  public jax.nn.dot_product_attention takes one length per row). Needs Hopper or newer."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
  mask_type = cudnn_fa.MaskType.PADDING_CAUSAL if causal else cudnn_fa.MaskType.PADDING
  return cudnn_fa.dot_product_attention(
      q_btnh, k_btnh, v_btnh, q_seqlen=lengths_bm, kv_seqlen=lengths_bm, q_offsets=offsets_bm,
      kv_offsets=offsets_bm, scale=q_btnh.shape[-1] ** -0.5, mask_type=mask_type,
      qkv_layout="BTNH")


def _packed_layout_supported() -> bool:
  """Whether cuDNN's packed layout runs here (jax 0.10.2 allows it from Hopper, sm 9.0, up)."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
    return bool(cudnn_fa.check_compute_capability("9.0"))
  except Exception:  # pylint: disable=broad-except
    return False  # no CUDA backend


def _cudnn_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs,
                     implementation: str | None = "cudnn", max_segments: int | None = None,
                     causal: bool = False):
  """cuDNN fused attention. Padded rows: jax.nn.dot_product_attention with the key lengths
  (every query, padding included, attends the row's real keys, as the xla path does), GQA
  native. Packed rows: the packed layout over `packed_segments`, with M = max_segments + 1 (the
  padding run) capped at t; before Hopper, which lacks it, a [b, 1, t, s] segment mask.
  `implementation="xla"` runs the padded path through jax's XLA implementation (CPU tests; the
  packed kernel has none)."""
  if q_segment_ids_bt is None:
    return jax.nn.dot_product_attention(
        q_btnh, k_bskh, v_bskh, key_value_seq_lengths=_padded_key_lengths(kv_segment_ids_bs),
        implementation=implementation, is_causal=causal).astype(q_btnh.dtype)
  if not _packed_layout_supported():
    mask = _mask_bts(q_segment_ids_bt, kv_segment_ids_bs, q_btnh.shape[1], causal)[:, None]
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask,
                                        implementation=implementation).astype(q_btnh.dtype)
  t = q_btnh.shape[1]
  m = t if max_segments is None else min(t, int(max_segments) + 1)
  lengths_bm, offsets_bm = packed_segments(kv_segment_ids_bs, m)
  # jax 0.10.2 scales the key offsets by the query heads' stride (jax-ml/jax#39521, fixed
  # later): with GQA they would point at other tokens' keys, so K/V get every query head here.
  g = q_btnh.shape[2] // k_bskh.shape[2]
  k_btnh = jnp.repeat(k_bskh, g, axis=2) if g > 1 else k_bskh
  v_btnh = jnp.repeat(v_bskh, g, axis=2) if g > 1 else v_bskh
  return _cudnn_packed_kernel(q_btnh, k_btnh, v_btnh, lengths_bm, offsets_bm,
                              causal).astype(q_btnh.dtype)


def reference_attention(q_btnh, k_bskh, v_bskh, q_segment_ids_bt, kv_segment_ids_bs,
                        causal: bool = False):
  """Plain-jnp attention (repeats K/V, autodiff backward): the tests' reference."""
  b, t, n, h = q_btnh.shape
  g = n // k_bskh.shape[2]
  k_bsnh = jnp.repeat(k_bskh, g, axis=2).astype(jnp.float32)
  v_bsnh = jnp.repeat(v_bskh, g, axis=2).astype(jnp.float32)
  s_bnts = jnp.einsum("btnh,bsnh->bnts", q_btnh.astype(jnp.float32), k_bsnh) / np.sqrt(h)
  if q_segment_ids_bt is None:
    mask_bts = jnp.broadcast_to((kv_segment_ids_bs != 0)[:, None, :], (b, t, k_bskh.shape[1]))
  else:
    mask_bts = _segment_mask_bts(q_segment_ids_bt, kv_segment_ids_bs)
  if causal:
    mask_bts = mask_bts & jnp.tril(jnp.ones((t, k_bskh.shape[1]), bool))[None]
  s_bnts = jnp.where(mask_bts[:, None], s_bnts, _MASKED)
  p_bnts = jax.nn.softmax(s_bnts, axis=-1)
  return jnp.einsum("bnts,bsnh->btnh", p_bnts, v_bsnh).astype(q_btnh.dtype)
