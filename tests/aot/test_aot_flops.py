"""The analytic FLOPs of a train step (training/flops.py) against a hand count on a tiny model.

The hand count lists every matmul of the encoder with its [M, K] x [K, N] shape and charges
2*M*K*N; attention is bidirectional, so scores and the weighted sum span all T x T pairs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonir_jax.configs import load_config
from reasonir_jax.training import flops

# reasonir_jax/configs/tiny.py: d=64, ff=128, 2 layers, 4 heads, 2 KV heads, head_dim 16.
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


def hand_count(cfg, grad_cache: bool, executed: bool = False) -> int:
  """Model FLOPs; `executed`: plus what the step runs again (tiny has remat "none": only the
  q.k^T scores, which attention's flash-style backward recomputes)."""
  fwd = rescored = 0
  for rows, length in ((B, QLEN), (B * GROUP, PLEN)):
    fwd += rows * sum(2 * m * k * n for m, k, n in matmuls_of_one_sequence(cfg, length))
    rescored += rows * 2 * length * cfg.head_dim * length * cfg.num_heads * cfg.num_layers
  passes = 4 if grad_cache else 3  # forward + backward (2x); GradCache re-runs the forward
  similarity = 3 * 2 * B * cfg.hidden_size * (B * GROUP)  # [B,D]x[D,BG] and its two grads
  return passes * fwd + similarity + (rescored if executed else 0)


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
  assert got == hand_count(tiny_model_cfg, grad_cache=bool(chunk), executed=True)


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


# A hand-sized model: per layer q 8*8 + k,v 2*8*4 + o 8*8 + MLP 3*8*16 = 576 weights, of which
# the down projection 16*8 = 128; 2 layers (1152 per token), 2 heads of 4.
SMALL = dict(hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
             head_dim=4, remat_policy="full")


def test_attention_pairs_of_packed_rows():
  # Row 0: texts of 3 and 4 tokens and one pad: 9 + 16 = 25 pairs (not 8^2 = 64); row 1: one
  # text of 8 (64); row 2: padding only (0); row 3: 8 texts of 1 token (8).
  ids = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 8, [0] * 8, list(range(1, 9))], np.int32)
  assert float(flops.attention_pairs(ids)) == 25 + 64 + 0 + 8
  assert float(flops.attention_pairs(jnp.asarray(ids[:1]))) == 25


def test_packed_rows_count_only_attention_within_each_text():
  # B=2 queries packed in 1 row of 8 (texts of 3 and 4: 25 pairs), G=2: 4 passages in 2 rows of
  # 8 (pairs 89 = 25 + 64). Dense: 2 * 1152 * (8 + 16) = 55,296; attention 4 * (25 + 89) pairs
  # * 2 heads * 4 * 2 layers = 7,296; similarity 3 * 2 * 2 * 4 * 8 = 384.
  # Model FLOPs: 3 * (55,296 + 7,296) + 384 = 188,160 (every L^2 pair: 203,136).
  assert flops.train_step_flops(SMALL, 2, 8, 8, 2, rows=(1, 2), pairs=(25, 89)) == 188_160
  assert flops.train_step_flops(SMALL, 2, 8, 8, 2, rows=(1, 2)) == 203_136
  # The trainer's per-batch count: the pairs come from the batch's segment ids, on device.
  q = np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32)
  p = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 8], np.int32)
  batch = {"query": {"input_ids": q, "segment_ids": q}, "passage": {"input_ids": p, "segment_ids": p}}
  tokens, model, executed = flops.step_counts(SMALL, batch, 2, 2, 0, {"query": 1, "passage": 2})
  assert tokens == 24 and float(model) == 188_160
  assert float(executed) == pytest.approx(
      188_160 + flops.recomputed_flops(SMALL, 24, 114), rel=1e-6)


@pytest.mark.parametrize("policy,recomputed", [
    # B=2, lengths 3 and 5, G=2: 6 + 20 = 26 tokens; 2*9 + 4*25 = 118 pairs. Attention forward
    # 4 * 118 * 2 * 4 * 2 = 7,552; its scores again in the backward: 3,776.
    ("none", 3_776),
    ("dots", 7_552 + 3_776),            # attention's forward reruns
    ("dots_no_batch", 7_552 + 3_776),
    # The layers' forward without the down projection: 2 * (576 - 128) * 2 layers * 26 tokens.
    ("full", 46_592 + 7_552 + 3_776),
    ("offload", 46_592 + 7_552 + 3_776),  # as full; the layer input waits in host memory
])
def test_executed_flops_add_what_the_backward_recomputes(policy, recomputed):
  cfg = dict(SMALL, remat_policy=policy)
  # Dense forward 2 * 1152 * 26 = 59,904; model 3 * (59,904 + 7,552) + 384 = 202,752.
  assert flops.train_step_flops(cfg, 2, 3, 5, 2) == 202_752
  assert flops.hardware_step_flops(cfg, 2, 3, 5, 2) == 202_752 + recomputed
  # GradCache's gradient-free pass adds one more forward (67,456).
  assert flops.hardware_step_flops(cfg, 2, 3, 5, 2, grad_cache_chunk=2) == \
      202_752 + recomputed + 67_456
  assert flops.recomputed_flops(cfg, 26, 118) == recomputed
  # Splash's separate dq and dk/dv kernels run q.k^T and dO.v^T twice: 2 more matmuls of
  # 3,776 each than the xla and cudnn backwards.
  assert flops.recomputed_flops(cfg, 26, 118, attention="cudnn") == recomputed
  assert flops.recomputed_flops(cfg, 26, 118, attention="splash") == recomputed + 2 * 3_776
  assert flops.hardware_step_flops(cfg, 2, 3, 5, 2, attention="splash") == \
      202_752 + recomputed + 2 * 3_776


def test_executed_flops_match_xla_cost_analysis():
  # Unscanned layers (XLA counts a scanned body once) and matmuls wide enough that the
  # elementwise ops XLA also counts stay under 1%: the count of what the gradient runs agrees.
  # Counting the whole forward as recomputed (down projection included) would be 6% high.
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig
  cfg = ModelConfig(vocab_size=64, hidden_size=256, intermediate_size=1024, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=64, param_dtype="float32",
                    dtype="float32", scan_layers=False, attention="xla", remat_policy="full")
  graphdef, state = nnx.split(LlamaEncoder(cfg, rngs=nnx.Rngs(0)))
  b, length = 2, 32
  ids = jnp.ones((b, length), jnp.int32)

  def loss(state):
    return jnp.sum(nnx.merge(graphdef, state)(ids, ids) ** 2)

  xla = jax.jit(jax.grad(loss)).lower(state).compile().cost_analysis()["flops"]
  forward = flops.encoder_forward_flops(cfg, b, length)
  ours = 3 * forward + flops.recomputed_flops(cfg, b * length, b * length * length)
  assert xla == pytest.approx(ours, rel=0.01)


def test_the_encoders_packing_cost_uses_the_same_formulas():
  import types
  from reasonir_jax.encoder import ATTN_COST_WEIGHT, Encoder
  enc = types.SimpleNamespace(model_cfg=types.SimpleNamespace(**SMALL))
  # One row of 8: dense 2 * 1152 * 8 = 18,432; attention 4 * 64 pairs * 2 heads * 4 * 2 layers
  # = 4,096, weighted 12x (every pair of the row runs, masked or not).
  assert ATTN_COST_WEIGHT == 12
  assert Encoder._row_cost(enc, 1, 8) == 18_432 + 12 * 4_096
