"""The Llama-3.1 / Qwen3 encoder (Flax NNX): embeddings, RMSNorm, RoPE, GQA attention over
segment ids (bidirectional, or causal with `causal`; `reasonir_jax.model.attention`), SwiGLU MLP,
final norm; no LM head. Qwen3 differs by one switch: `qk_norm`, an RMSNorm over head_dim on each
head of q and k before RoPE.

Axis suffixes: b batch, t/s query/key time, d model width, n heads, k kv heads, g query heads per
kv head, h head dim, f MLP width, v vocab. Parameters carry logical axis names for sharding
(`out_sharding` metadata, mapped to the mesh by `reasonir_jax.sharding`).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding, PartitionSpec

from reasonir_jax import sharding
from reasonir_jax.model.attention import attention
from reasonir_jax.model.config import ModelConfig
from reasonir_jax.model.rope import apply_rope, rope_cos_sin

_INIT_STD = 0.02

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    # As full, but each layer's input (all that full keeps: [tokens, d] per layer, 48 GiB per
    # chip for the 8B recipe on v5p-128) waits for the backward in host memory.
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"],
        offload_src="device", offload_dst="pinned_host"),
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Sequence[str | None], dtype,
           ones: bool = False) -> nnx.Param:
  if ones:
    value = jnp.ones(shape, dtype)
  else:
    value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  # eager_sharding=False: the logical names are mapped to a mesh by reasonir_jax.sharding.
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
  """Over the last axis: hidden_size wide, or head_dim wide for Qwen3's q/k norms."""

  def __init__(self, cfg: ModelConfig, size: int | None = None):
    self.eps = cfg.rms_norm_eps
    self.dtype = cfg.jnp_dtype
    self.scale = _param(None, (size or cfg.hidden_size,), (None,), cfg.jnp_param_dtype, ones=True)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x = x_btd.astype(jnp.float32)
    var_bt1 = jnp.mean(x * x, axis=-1, keepdims=True)
    normed = (x * jax.lax.rsqrt(var_bt1 + self.eps)).astype(self.dtype)
    return self.scale[...].astype(self.dtype) * normed


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = cfg.jnp_param_dtype
    self.cfg = cfg
    self.q_proj = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pd)
    self.k_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.v_proj = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.o_proj = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pd)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(cfg, h)
      self.k_norm = RMSNorm(cfg, h)

  def __call__(self, x_btd, q_segment_ids_bt, kv_segment_ids_bs, cos_th, sin_th,
               max_segments=None):
    """Segment ids and max_segments as in `reasonir_jax.model.attention.attention` (q ids None:
    unpacked rows, the kv ids are the padding mask)."""
    cfg = self.cfg
    dt = cfg.jnp_dtype
    q_btnh = _dense(x_btd, self.q_proj[...].astype(dt), 1)
    k_btkh = _dense(x_btd, self.k_proj[...].astype(dt), 1)
    v_btkh = _dense(x_btd, self.v_proj[...].astype(dt), 1)
    q_btnh = sharding.constrain(q_btnh, ("batch", "length", "act_heads", None))
    k_btkh = sharding.constrain(k_btkh, ("batch", "length", "act_kv_heads", None))
    v_btkh = sharding.constrain(v_btkh, ("batch", "length", "act_kv_heads", None))
    if cfg.qk_norm:
      q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
    q_btnh = apply_rope(q_btnh, cos_th, sin_th)
    k_btkh = apply_rope(k_btkh, cos_th, sin_th)

    out_btnh = attention(q_btnh, k_btkh, v_btkh, q_segment_ids_bt, kv_segment_ids_bs,
                         implementation=cfg.attention, remat=cfg.remat_policy != "none",
                         max_segments=max_segments, causal=cfg.causal)
    out_btnh = sharding.constrain(out_btnh, ("batch", "length", "act_heads", None))
    return _dense(out_btnh, self.o_proj[...].astype(dt), 2)


def _dense(x, w, contract: int):
  """Contracts the last `contract` dims of x with the first of w, as one 2-D matmul.

  Same result as the einsum; the [tokens, in] x [in, out] form keeps XLA:CPU's backward in
  plain row-major matmuls (the 3-D/4-D einsum made it transpose the cotangents into
  column-major copies and use transposed matmuls: ~2x slower; neutral on TPU).
  """
  lead, k_shape, out_shape = x.shape[:-contract], x.shape[-contract:], w.shape[contract:]
  k = math.prod(k_shape)
  y = x.reshape(-1, k) @ w.reshape(k, -1)
  return y.reshape(*lead, *out_shape)


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
    self.dtype = cfg.jnp_dtype
    self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), pd)
    self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), pd)
    self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), pd)

  def __call__(self, x_btd):
    dt = self.dtype
    gate_btf = _dense(x_btd, self.gate_proj[...].astype(dt), 1)
    up_btf = _dense(x_btd, self.up_proj[...].astype(dt), 1)
    h_btf = sharding.constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "act_mlp"))
    return _dense(h_btf, self.down_proj[...].astype(dt), 1)


class Block(nnx.Module):
  """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_btd, q_segment_ids_bt, kv_segment_ids_bs, cos_th, sin_th,
               max_segments=None):
    x_btd = x_btd + self.attn(self.input_norm(x_btd), q_segment_ids_bt, kv_segment_ids_bs,
                              cos_th, sin_th, max_segments)
    x_btd = x_btd + self.mlp(self.post_attn_norm(x_btd))
    return sharding.constrain(x_btd, ("batch", "length", "act_embed"))


def _layer_fn(graphdef, remat_policy: str, max_segments: int | None = None):
  """A pure function (params, x, q ids, kv ids, cos, sin) -> x for one layer, rematerialised if
  asked (`max_segments`, static, as in attention())."""

  def run(params, x_btd, q_segment_ids_bt, kv_segment_ids_bs, cos_th, sin_th):
    x_btd = checkpoint_name(x_btd, "layer_input")  # what "offload" moves
    return nnx.merge(graphdef, params)(x_btd, q_segment_ids_bt, kv_segment_ids_bs, cos_th, sin_th,
                                       max_segments)

  if remat_policy == "none":
    return run
  return jax.checkpoint(run, policy=REMAT_POLICIES[remat_policy])


def _unstack_layers(cfg: ModelConfig, stacked: nnx.Module) -> list[Block]:
  """Per-layer Blocks holding slices of a vmapped stack of Blocks (with their own, unstacked,
  sharding metadata)."""
  values = nnx.to_pure_dict(nnx.state(stacked))
  blocks = []
  for i in range(cfg.num_layers):
    block = nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0)))  # shapes only: values follow
    state = nnx.state(block)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a, i=i: a[i], values))
    nnx.update(block, state)
    blocks.append(block)
  return blocks


def _lookup_embeddings(table_vd: jax.Array, ids_bl: jax.Array, dtype) -> jax.Array:
  """`table_vd[ids_bl]` in `dtype`, laid out so that neither the lookup nor its gradient replicates [b, l, d].

  Under FSDP the table's embed dim is split over mesh axes ("fsdp") that also split the batch.
  Left alone, XLA cannot move the gradient's batch-split [b, l, d] cotangent into the table's
  embed-split layout ("Involuntary full rematerialization"): it all-gathers the whole cotangent
  onto every device, or scatter-adds into a full [v, d] gradient and all-reduces that. So the
  lookup runs with the batch split over the other axes only and the embed dim split like the
  table: each device gathers its own columns for a group of rows (the ids are all-gathered
  within the group) and the caller's batch constraint is one all-to-all. The gradient goes back
  the same way: an all-to-all, a scatter-add into the local table shard, an all-reduce over the
  remaining batch axes. (Gathering the table instead would put all of it, 2 GiB in fp32 for
  Llama-3 8B, and its gradient on every device.) Without a mesh this is a plain `jnp.take`.
  """
  active = sharding.active_sharding()
  if active is None:
    return jnp.take(table_vd, ids_bl, axis=0).astype(dtype)
  mesh, rules = active
  embed_spec = sharding.logical_to_spec(("vocab", "embed"), rules, mesh, table_vd.shape)[1]
  table_axes = _mesh_axes(embed_spec)
  ids_spec = sharding.logical_to_spec(("batch", "length"), rules, mesh, ids_bl.shape)
  # Axes dropped from an evenly divided dimension leave it evenly divided.
  ids_spec = [tuple(a for a in _mesh_axes(s) if a not in table_axes) or None for s in ids_spec]
  ids_bl = jax.lax.with_sharding_constraint(ids_bl, NamedSharding(mesh, PartitionSpec(*ids_spec)))
  # Cast before the all-to-all so that it (and its transpose) moves compute-dtype values.
  x_bld = jnp.take(table_vd, ids_bl, axis=0).astype(dtype)
  return jax.lax.with_sharding_constraint(
      x_bld, NamedSharding(mesh, PartitionSpec(*ids_spec, embed_spec)))


def _mesh_axes(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


class LlamaEncoder(nnx.Module):
  """Llama or Qwen3: [b, l] token ids + attention mask -> [b, l, d] final-norm states."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                               cfg.jnp_param_dtype)
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stacked(rngs):
      return Block(cfg, rngs=rngs)

    self.layers = stacked(rngs)
    if not cfg.scan_layers:
      # Unstacked from the scanned layout, so that the switch changes speed but never the
      # starting weights of a seed.
      self.layers = nnx.List(_unstack_layers(cfg, self.layers))
    self.final_norm = RMSNorm(cfg)
    self._activation_sharding = None

  def set_activation_sharding(self, mesh, rules) -> None:
    """Makes the activation constraints act on `mesh` (they are no-ops until this is set)."""
    if mesh is None:
      self._activation_sharding = None
    else:
      rules = tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in rules)
      self._activation_sharding = (mesh, rules)

  def __call__(self, input_ids_bl: jax.Array, attention_mask_bl: jax.Array | None = None, *,
               segment_ids_bl: jax.Array | None = None, positions_bl: jax.Array | None = None,
               output_hidden_states: bool = False, max_segments: int | None = None):
    """Returns hidden_bld (after the final norm, compute dtype); with output_hidden_states also
    the tuple (embeddings, output of layer 1, ..., output of layer N) before the final norm.

    Padded rows pass attention_mask_bl (1 = token). Packed rows (reasonir_jax.packing) pass
    segment_ids_bl (1, 2, ... per text, 0 = padding: attention stays within a segment) and
    positions_bl (restarting at 0 for every text) instead, and may bound the texts of one row
    by max_segments (static; the cudnn attention backend sizes its packed layout by it).
    """
    # Unpacked rows: the mask serves as the key segment ids and the query ids stay None, which
    # lets attention use a [b, s] key bias instead of a [b, t, s] segment mask.
    packed = segment_ids_bl is not None
    if segment_ids_bl is None:
      if attention_mask_bl is None:
        raise ValueError("LlamaEncoder: pass attention_mask_bl or segment_ids_bl")
      segment_ids_bl = attention_mask_bl
    segment_ids_bl = jnp.asarray(segment_ids_bl).astype(jnp.int32)
    if self._activation_sharding is None:
      return self._forward(input_ids_bl, segment_ids_bl, positions_bl, output_hidden_states,
                           packed, max_segments)
    with sharding.activation_sharding(*self._activation_sharding):
      return self._forward(input_ids_bl, segment_ids_bl, positions_bl, output_hidden_states,
                           packed, max_segments)

  def _forward(self, input_ids_bl, segment_ids_bl, positions_bl, output_hidden_states,
               packed: bool = False, max_segments: int | None = None):
    cfg = self.cfg
    dt = cfg.jnp_dtype
    input_ids_bl = sharding.constrain(input_ids_bl, ("batch", "length"))
    x_bld = _lookup_embeddings(self.embed_tokens[...], input_ids_bl, dt)
    x_bld = sharding.constrain(x_bld, ("batch", "length", "act_embed"))
    if positions_bl is not None:
      positions_bl = sharding.constrain(positions_bl, ("batch", "length"))
    cos_lh, sin_lh = rope_cos_sin(cfg, input_ids_bl.shape[1], dt, positions_bl)
    kv_ids_bl = sharding.constrain(segment_ids_bl, ("batch", "length"))
    q_ids_bl = kv_ids_bl if packed else None
    hidden = [x_bld]

    if cfg.scan_layers:
      graphdef, params = nnx.split(self.layers)
      layer = _layer_fn(graphdef, cfg.remat_policy, max_segments)

      def body(x, layer_params):
        y = layer(layer_params, x, q_ids_bl, kv_ids_bl, cos_lh, sin_lh)
        return y, (y if output_hidden_states else None)

      x_bld, ys_nbld = jax.lax.scan(body, x_bld, params)
      if output_hidden_states:
        hidden.extend(ys_nbld[i] for i in range(cfg.num_layers))
    else:
      for block in self.layers:
        graphdef, params = nnx.split(block)
        x_bld = _layer_fn(graphdef, cfg.remat_policy, max_segments)(params, x_bld, q_ids_bl,
                                                                     kv_ids_bl, cos_lh, sin_lh)
        hidden.append(x_bld)

    out_bld = self.final_norm(x_bld)
    if output_hidden_states:
      return out_bld, tuple(hidden)
    return out_bld
