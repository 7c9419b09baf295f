"""The analytic FLOPs of a train step (training/flops.py) against a hand count on a tiny model.

The hand count lists every matmul of the encoder with its [M, K] x [K, N] shape and charges
2*M*K*N; attention is bidirectional, so scores and the weighted sum span all T x T pairs.
"""
import pytest

from reasonir_jax.config import load_config
from reasonir_jax.training import flops

# configs/tiny.py: d=64, ff=128, 2 layers, 4 heads, 2 KV heads, head_dim 16.
B, QLEN, PLEN, GROUP = 16, 32, 64, 2


def matmuls_of_one_sequence(cfg, t):
  d, ff = cfg.hidden_size, cfg.intermediate_size
  nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer = [
      (t, d, nh * hd),    # q projection
      (t, d, nkv * hd),   # k projection
      (t, d, nkv * hd),   # v projection
      *[(t, hd, t)] * nh,  # q.k^T per head, all t x t pairs (no causal mask)
      *[(t, t, hd)] * nh,  # probs.v per head
      (t, nh * hd, d),    # o projection
      (t, d, ff), (t, d, ff),  # gate, up
      (t, ff, d),         # down
  ]
  return per_layer * cfg.num_layers


def hand_count(cfg, grad_cache: bool) -> int:
  fwd = 0
  for rows, length in ((B, QLEN), (B * GROUP, PLEN)):
    fwd += rows * sum(2 * m * k * n for m, k, n in matmuls_of_one_sequence(cfg, length))
  passes = 4 if grad_cache else 3  # forward + backward (2x); GradCache re-runs the forward
  similarity = 3 * 2 * B * cfg.hidden_size * (B * GROUP)  # [B,D]x[D,BG] and its two grads
  return passes * fwd + similarity


@pytest.fixture(scope="module")
def tiny_model_cfg():
  return load_config("tiny").model


def test_literal_hand_count(tiny_model_cfg):
  # Per layer and token 2*(64*64 + 2*64*32 + 64*64 + 3*64*128) = 73,728 dense FLOPs; attention
  # 4 * T^2 * 4 heads * 16 per layer and sequence. Queries: 16 * 2 * (73,728*32 + 256*32^2) =
  # 83,886,080; passages: 32 * 2 * (73,728*64 + 256*64^2) = 369,098,752; x3, + 196,608.
  assert hand_count(tiny_model_cfg, grad_cache=False) == 1_359_151_104
  assert hand_count(tiny_model_cfg, grad_cache=True) == 1_812_135_936


@pytest.mark.parametrize("chunk", [0, 8])
def test_train_step_flops_equals_hand_count(tiny_model_cfg, chunk):
  # Model FLOPs (MFU) leave out GradCache's extra forward pass; the hardware count has it.
  assert flops.train_step_flops(tiny_model_cfg, B, QLEN, PLEN, GROUP) == hand_count(
      tiny_model_cfg, grad_cache=False)
  got = flops.hardware_step_flops(tiny_model_cfg, B, QLEN, PLEN, GROUP, grad_cache_chunk=chunk)
  assert got == hand_count(tiny_model_cfg, grad_cache=bool(chunk))


def test_attention_is_counted_bidirectionally(tiny_model_cfg):
  # Doubling the length quadruples the attention term: the full T x T is counted.
  def attention_only(length):
    return (flops.encoder_forward_flops(tiny_model_cfg, 1, length)
            - 2 * flops.matmul_params_per_token(tiny_model_cfg) * length)
  assert attention_only(64) == 4 * attention_only(32)
  assert attention_only(32) == 4 * 32 * 32 * 4 * 16 * 2


def test_tokens_per_step():
  assert flops.tokens_per_step(B, QLEN, PLEN, GROUP) == B * QLEN + B * GROUP * PLEN == 2560


def test_packed_rows_count_the_rows_encoded(tiny_model_cfg):
  # Packed batches hold several texts per row: B/4 query rows and B*G/2 passage rows.
  rows = (B // 4, B * GROUP // 2)
  assert flops.tokens_per_step(B, QLEN, PLEN, GROUP, rows) == rows[0] * QLEN + rows[1] * PLEN
  packed = flops.train_step_flops(tiny_model_cfg, B, QLEN, PLEN, GROUP, rows)
  padded = flops.train_step_flops(tiny_model_cfg, B, QLEN, PLEN, GROUP)
  sim = 3.0 * 2.0 * B * B * GROUP * tiny_model_cfg["hidden_size"]
  fwd = (flops.encoder_forward_flops(tiny_model_cfg, rows[0], QLEN)
         + flops.encoder_forward_flops(tiny_model_cfg, rows[1], PLEN))
  assert packed == pytest.approx(3.0 * fwd + sim) and packed < padded
