"""Analytic FLOPs and tokens of one contrastive train step (MFU, HFU, the AOT report, the
Encoder's packing cost) and the devices' peak FLOP/s: the one place these formulas and figures
live. Importing it does not import jax (scale/tpu_topologies.py reads the peaks before the AOT
report configures libtpu).

XLA's cost analysis counts a scanned layer body once, so FLOPs are counted by hand: 2 FLOPs per
multiply-add of every weight matmul per token slot, bidirectional attention over the (query,
key) pairs a text attends (q.k^T and probs.v), forward x3 for forward + backward, and the
[B, B*G] similarity matrix. Embedding lookups, norms and softmax are not matmuls and are not
counted (the usual MFU convention).

Attention pairs: a padded row of L tokens computes all L x L pairs (twice what causal formulas
count). A packed row (reasonir_jax.packing) holds several texts, each attending only to itself:
the model needs sum_i len_i^2 pairs, not L^2 (`attention_pairs` counts them on device), so MFU
does not credit the masked cross-text blocks.

`train_step_flops` is the model's FLOPs, what MFU divides: the same with or without GradCache or
remat. `hardware_step_flops` is what the step executes, what HFU divides (`recomputed_flops`):
  - GradCache's extra, gradient-free forward pass of both encoders;
  - remat's recomputed forward, by `model.remat_policy` (model/llama.py):
      none            nothing is recomputed;
      full, offload   each layer's forward reruns in the backward pass (offload only moves the
                      saved layer input to host memory), all but the MLP's down projection:
                      the backward does not need a layer's output, and XLA drops that matmul;
      dots            matmul outputs are saved, but attention's custom forward is no dot to the
                      policy, so its two matmuls rerun;
      dots_no_batch   weight matmuls are saved; the attention matmuls (batched) rerun;
  - attention's backward recomputing the q.k^T scores (every backend here is flash-style: the
    forward keeps row statistics, not the weights): once in the xla and cudnn backends (5
    [pairs x head_dim] matmuls where autodiff's count has 4), and in splash, whose dq and dk/dv
    kernels are separate, q.k^T and dO.v^T in both (7 matmuls).
The recompute counts of the xla backend were checked against XLA's cost analysis of an
unscanned model (tests/aot/test_aot_flops.py); the splash kernel's were read from its source.
"""
from __future__ import annotations

import functools

# Peak dense bf16 FLOP/s per chip (Cloud TPU and NVIDIA spec sheets): MFU's denominator
# (training/metrics.py) and the AOT report's step-time bounds (scale/tpu_topologies.py).
PEAK_BF16_FLOPS = {"v4": 275e12, "v5p": 459e12, "v5e": 197e12, "v6e": 918e12,
                   "h200": 989e12, "h100": 989e12, "a100": 312e12}

# `jax.Device.device_kind` substrings -> PEAK_BF16_FLOPS keys (first match wins).
_DEVICE_KINDS = (("v5 lite", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v5", "v5p"),
                 ("v6 lite", "v6e"), ("v6e", "v6e"), ("v4", "v4"),
                 ("h200", "h200"), ("h100", "h100"), ("a100", "a100"))


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> float | None:
  """Peak bf16 FLOP/s of one device, `override` if > 0, None when unknown (e.g. CPU)."""
  if override and override > 0:
    return float(override)
  kind = device_kind.lower()
  for key, chip in _DEVICE_KINDS:
    if key in kind:
      return PEAK_BF16_FLOPS[chip]
  return None


def _get(cfg, name):
  return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def _layer_matmul_params(model_cfg) -> tuple[int, int]:
  """(weights per layer touched by matmuls per token, of which the MLP's down projection)."""
  d = _get(model_cfg, "hidden_size")
  nh, nkv, hd = _get(model_cfg, "num_heads"), _get(model_cfg, "num_kv_heads"), _get(model_cfg, "head_dim")
  ff = _get(model_cfg, "intermediate_size")
  return d * nh * hd + 2 * d * nkv * hd + nh * hd * d + 3 * d * ff, ff * d


def matmul_params_per_token(model_cfg) -> int:
  """Weights touched by matmuls per token (no embedding table: it is a lookup, no LM head)."""
  return _get(model_cfg, "num_layers") * _layer_matmul_params(model_cfg)[0]


def dense_forward_flops(model_cfg, tokens) -> float:
  """Forward FLOPs of the weight matmuls over `tokens` token slots."""
  return 2.0 * matmul_params_per_token(model_cfg) * tokens


def attention_forward_flops(model_cfg, pairs) -> float:
  """Forward FLOPs of attention over `pairs` (query, key) pairs: q.k^T and probs.v, 2 FLOPs
  per multiply-add each, per head and layer."""
  nh, hd = _get(model_cfg, "num_heads"), _get(model_cfg, "head_dim")
  return 4.0 * pairs * nh * hd * _get(model_cfg, "num_layers")


def encoder_forward_flops(model_cfg, batch: int, length: int, pairs=None) -> float:
  """Forward FLOPs of encoding `batch` rows of `length` tokens; `pairs` = the attention pairs
  (default: every row attends all length x length pairs, as padded rows do)."""
  pairs = batch * length * length if pairs is None else pairs
  return dense_forward_flops(model_cfg, batch * length) + attention_forward_flops(model_cfg, pairs)


# Extra [pairs x head_dim] matmuls in each backend's attention backward (module docstring).
_ATTENTION_BACKWARD_EXTRA = {"xla": 1, "cudnn": 1, "splash": 3}


def recomputed_flops(model_cfg, tokens, pairs, remat_policy: str | None = None,
                     attention: str = "xla") -> float:
  """FLOPs the backward pass executes again for `tokens` slots and `pairs` attention pairs:
  remat's recomputed forward (module docstring) plus what the `attention` backend (resolved:
  xla, splash or cudnn) recomputes."""
  policy = _get(model_cfg, "remat_policy") if remat_policy is None else remat_policy
  if attention not in _ATTENTION_BACKWARD_EXTRA:
    raise ValueError(f"attention backend {attention!r} is not one of "
                     f"{sorted(_ATTENTION_BACKWARD_EXTRA)}")
  forward = attention_forward_flops(model_cfg, pairs)
  # Each extra backward matmul is one of the forward's two.
  backward = _ATTENTION_BACKWARD_EXTRA[attention] * forward / 2
  if policy == "none":
    return backward
  if policy in ("full", "offload"):
    per_layer, down = _layer_matmul_params(model_cfg)
    layers = _get(model_cfg, "num_layers")
    return 2.0 * (per_layer - down) * layers * tokens + forward + backward
  if policy in ("dots", "dots_no_batch"):
    return forward + backward
  raise ValueError(f"model.remat_policy={policy!r}: no recompute count for it")


def _sides(global_batch, query_len, passage_len, group_size, rows, pairs):
  """((rows, length, pairs) of the queries, the same of the passages)."""
  query_rows, passage_rows = rows or (global_batch, global_batch * group_size)
  query_pairs, passage_pairs = pairs or (query_rows * query_len**2, passage_rows * passage_len**2)
  return ((query_rows, query_len, query_pairs), (passage_rows, passage_len, passage_pairs))


def _encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size,
                            rows=None, pairs=None):
  return sum(encoder_forward_flops(model_cfg, r, length, p) for r, length, p in
             _sides(global_batch, query_len, passage_len, group_size, rows, pairs))


def train_step_flops(model_cfg, global_batch: int, query_len: int, passage_len: int,
                     group_size: int, rows: tuple[int, int] | None = None,
                     pairs=None) -> float:
  """Model FLOPs of one train step on the global batch (all devices together): for MFU.

  `rows` = (query rows, passage rows) of packed batches, whose rows hold several texts
  (default: one text per row, B and B*G); `pairs` = (query, passage) attention pairs
  (`attention_pairs` of packed rows; default: all L x L pairs of every row)."""
  fwd = _encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size, rows,
                                pairs)
  # Similarity [B, D] x [D, B*G]: forward plus the two backward matmuls.
  sim = 3.0 * 2.0 * global_batch * global_batch * group_size * _get(model_cfg, "hidden_size")
  return 3.0 * fwd + sim


def hardware_step_flops(model_cfg, global_batch: int, query_len: int, passage_len: int,
                        group_size: int, grad_cache_chunk: int = 0,
                        rows: tuple[int, int] | None = None, pairs=None,
                        remat_policy: str | None = None, attention: str = "xla") -> float:
  """FLOPs the step executes (for HFU): the model's, plus GradCache's extra forward pass when it
  is on, plus what the backward recomputes (`recomputed_flops`; `remat_policy` defaults to
  model_cfg's, `attention` is the resolved backend)."""
  sides = _sides(global_batch, query_len, passage_len, group_size, rows, pairs)
  extra = (_encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size,
                                   rows, pairs) if grad_cache_chunk else 0.0)
  extra += sum(recomputed_flops(model_cfg, r * length, p, remat_policy, attention)
               for r, length, p in sides)
  return train_step_flops(model_cfg, global_batch, query_len, passage_len, group_size, rows,
                          pairs) + extra


def tokens_per_step(global_batch: int, query_len: int, passage_len: int, group_size: int,
                    rows: tuple[int, int] | None = None) -> int:
  """Token slots encoded per step: B queries of query_len and B*G passages of passage_len, or
  the packed `rows` (query rows, passage rows) of those lengths."""
  query_rows, passage_rows = rows or (global_batch, global_batch * group_size)
  return query_rows * query_len + passage_rows * passage_len


def attention_pairs(segment_ids_bl):
  """sum over texts of len_i^2 for packed rows (segment ids 1, 2, ... per text, each text one
  contiguous run, 0 = padding): the attention pairs the model needs. A float32 scalar, on
  device for global arrays (no host sync; nothing crosses rows)."""
  return _attention_pairs_jit()(segment_ids_bl)


@functools.cache
def _attention_pairs_jit():
  # Built on first use, so that importing this module does not import jax.
  import jax  # pylint: disable=import-outside-toplevel
  return jax.jit(_attention_pairs, inline=True)


def _attention_pairs(segment_ids_bl):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  ids = jnp.asarray(segment_ids_bl)
  b, l = ids.shape
  pos = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  first = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  last = jnp.concatenate([ids[:, 1:] != ids[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  start = jax.lax.cummax(jnp.where(first, pos, 0), axis=1)
  end = jax.lax.cummin(jnp.where(last, pos, l), axis=1, reverse=True)
  # Every token of a text of length n adds n: n^2 per text. Rows stay below 2^31 in int32.
  per_row = jnp.sum(jnp.where(ids > 0, end - start + 1, 0), axis=1)
  return jnp.sum(per_row.astype(jnp.float32))


def step_counts(model_cfg, batch: dict, global_batch: int, group_size: int,
                grad_cache_chunk: int = 0, packed_rows: dict | None = None,
                attention: str = "xla") -> tuple:
  """(token slots, model FLOPs, executed FLOPs) of one global `batch` as the trainer gets it:
  padded rows, or packed rows when `packed_rows` = {"query": rows, "passage": rows};
  `attention` is the resolved backend. A packed batch's FLOPs are device scalars (its attention
  pairs), read when the meter reports."""
  lq = batch["query"]["input_ids"].shape[1]
  lp = batch["passage"]["input_ids"].shape[1]
  rows = pairs = None
  if packed_rows:
    rows = (packed_rows["query"], packed_rows["passage"])
    pairs = (attention_pairs(batch["query"]["segment_ids"]),
             attention_pairs(batch["passage"]["segment_ids"]))
  return (tokens_per_step(global_batch, lq, lp, group_size, rows),
          train_step_flops(model_cfg, global_batch, lq, lp, group_size, rows, pairs),
          hardware_step_flops(model_cfg, global_batch, lq, lp, group_size, grad_cache_chunk, rows,
                              pairs, attention=attention))
