"""Analytic FLOPs and tokens of one contrastive train step (for MFU and the AOT report).

XLA's cost analysis counts a scanned layer body once, so FLOPs are counted by hand: 2 FLOPs per
multiply-add of every weight matmul per token, FULL bidirectional attention (L x L scores and
L x L x value, twice what causal formulas count), forward x3 for forward + backward, one more
forward of both encoders when GradCache is on, and the [B, B*G] similarity matrix. Embedding
lookups, norms and softmax are not matmuls and are not counted (the usual MFU convention).
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


def train_step_flops(model_cfg, global_batch: int, query_len: int, passage_len: int,
                     group_size: int, grad_cache_chunk: int = 0) -> float:
  """Model FLOPs of one train step on the global batch (all devices together)."""
  fwd = (encoder_forward_flops(model_cfg, global_batch, query_len)
         + encoder_forward_flops(model_cfg, global_batch * group_size, passage_len))
  encoders = (4.0 if grad_cache_chunk else 3.0) * fwd
  # Similarity [B, D] x [D, B*G]: forward plus the two backward matmuls.
  sim = 3.0 * 2.0 * global_batch * global_batch * group_size * _get(model_cfg, "hidden_size")
  return encoders + sim


def tokens_per_step(global_batch: int, query_len: int, passage_len: int, group_size: int) -> int:
  """Padded tokens encoded per step: B queries of query_len and B*G passages of passage_len."""
  return global_batch * query_len + global_batch * group_size * passage_len
