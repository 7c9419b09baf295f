"""Analytic FLOPs and tokens of one contrastive train step (for MFU and the AOT report).

XLA's cost analysis counts a scanned layer body once, so FLOPs are counted by hand: 2 FLOPs per
multiply-add of every weight matmul per token, FULL bidirectional attention (L x L scores and
L x L x value, twice what causal formulas count), forward x3 for forward + backward, and the
[B, B*G] similarity matrix. Embedding lookups, norms and softmax are not matmuls and are not
counted (the usual MFU convention).

`train_step_flops` is the model's FLOPs, what MFU divides: the same with or without GradCache.
`hardware_step_flops` adds what the step executes on top: GradCache's extra forward pass of both
encoders (its first, gradient-free pass; up to 4/3 of the model FLOPs).
"""
from __future__ import annotations


def _get(cfg, name):
  return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def matmul_params_per_token(model_cfg) -> int:
  """Weights touched by matmuls per token (no embedding table: it is a lookup, no LM head)."""
  d = _get(model_cfg, "hidden_size")
  nh, nkv, hd = _get(model_cfg, "num_heads"), _get(model_cfg, "num_kv_heads"), _get(model_cfg, "head_dim")
  ff = _get(model_cfg, "intermediate_size")
  per_layer = d * nh * hd + 2 * d * nkv * hd + nh * hd * d + 3 * d * ff
  return _get(model_cfg, "num_layers") * per_layer


def encoder_forward_flops(model_cfg, batch: int, length: int) -> float:
  """Forward FLOPs of encoding `batch` sequences of `length` tokens (bidirectional attention)."""
  tokens = batch * length
  dense = 2.0 * matmul_params_per_token(model_cfg) * tokens
  nh, hd = _get(model_cfg, "num_heads"), _get(model_cfg, "head_dim")
  # q.k^T and probs.v: 2 matmuls of 2 * L * L * nh * hd each, over all L x L pairs.
  attention = 4.0 * batch * length * length * nh * hd * _get(model_cfg, "num_layers")
  return dense + attention


def _encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size,
                            rows=None):
  query_rows, passage_rows = rows or (global_batch, global_batch * group_size)
  return (encoder_forward_flops(model_cfg, query_rows, query_len)
          + encoder_forward_flops(model_cfg, passage_rows, passage_len))


def train_step_flops(model_cfg, global_batch: int, query_len: int, passage_len: int,
                     group_size: int, rows: tuple[int, int] | None = None) -> float:
  """Model FLOPs of one train step on the global batch (all devices together): for MFU.

  `rows` = (query rows, passage rows) of packed batches, whose rows hold several texts
  (default: one text per row, B and B*G)."""
  fwd = _encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size, rows)
  # Similarity [B, D] x [D, B*G]: forward plus the two backward matmuls.
  sim = 3.0 * 2.0 * global_batch * global_batch * group_size * _get(model_cfg, "hidden_size")
  return 3.0 * fwd + sim


def hardware_step_flops(model_cfg, global_batch: int, query_len: int, passage_len: int,
                        group_size: int, grad_cache_chunk: int = 0,
                        rows: tuple[int, int] | None = None) -> float:
  """FLOPs the step executes: the model's, plus GradCache's extra forward pass when it is on."""
  extra = (_encoders_forward_flops(model_cfg, global_batch, query_len, passage_len, group_size,
                                   rows) if grad_cache_chunk else 0.0)
  return train_step_flops(model_cfg, global_batch, query_len, passage_len, group_size,
                          rows) + extra


def tokens_per_step(global_batch: int, query_len: int, passage_len: int, group_size: int,
                    rows: tuple[int, int] | None = None) -> int:
  """Token slots encoded per step: B queries of query_len and B*G passages of passage_len, or
  the packed `rows` (query rows, passage rows) of those lengths."""
  query_rows, passage_rows = rows or (global_batch, global_batch * group_size)
  return query_rows * query_len + passage_rows * passage_len
