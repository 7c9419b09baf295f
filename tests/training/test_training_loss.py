"""The contrastive loss against a plain NumPy InfoNCE, the optimiser schedule and the FLOPs count."""
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from reasonir_jax.training import flops, loss as loss_lib, optimizer


def _normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_infonce(q, p, temperature, group):
  """Reference: softmax over all B*G passages, target of query i is passage i*G."""
  logits = (q.astype(np.float64) @ p.astype(np.float64).T) / temperature
  losses = []
  for i in range(q.shape[0]):
    row = logits[i] - logits[i].max()
    losses.append(-(row[i * group] - np.log(np.exp(row).sum())))
  return float(np.mean(losses)), logits


@pytest.mark.parametrize("batch,group", [(4, 1), (4, 2), (3, 4), (6, 3)])
def test_loss_matches_numpy(batch, group):
  rng = np.random.default_rng(batch * 10 + group)
  q = _normalise(rng.normal(size=(batch, 8))).astype(np.float32)
  p = _normalise(rng.normal(size=(batch * group, 8))).astype(np.float32)
  if group > 2:  # a query with too few negatives repeats one (docs/reference.md section 2)
    p[1 * group + 2] = p[1 * group + 1]
  ref, logits = numpy_infonce(q, p, 0.02, group)
  loss, metrics = loss_lib.contrastive_loss(jnp.asarray(q), jnp.asarray(p), temperature=0.02,
                                            group_size=group)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-5)
  targets = np.arange(batch) * group
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(logits.argmax(1) == targets))
  cos = logits * 0.02
  pos = cos[np.arange(batch), targets]
  mask = np.ones_like(cos, bool)
  mask[np.arange(batch), targets] = False
  np.testing.assert_allclose(float(metrics["pos_sim"]), pos.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["neg_sim"]), cos[mask].mean(), rtol=1e-5, atol=1e-6)


def test_loss_gradient_matches_numpy_finite_difference():
  rng = np.random.default_rng(0)
  q = _normalise(rng.normal(size=(3, 5))).astype(np.float64)
  p = _normalise(rng.normal(size=(6, 5))).astype(np.float64)
  g = jax.grad(lambda q_: loss_lib.contrastive_loss(q_, jnp.asarray(p, jnp.float32),
                                                     temperature=0.5, group_size=2)[0])(
                                                         jnp.asarray(q, jnp.float32))
  eps = 1e-4
  num = np.zeros_like(q)
  for idx in np.ndindex(q.shape):
    plus, minus = q.copy(), q.copy()
    plus[idx] += eps
    minus[idx] -= eps
    num[idx] = (numpy_infonce(plus, p, 0.5, 2)[0] - numpy_infonce(minus, p, 0.5, 2)[0]) / (2 * eps)
  np.testing.assert_allclose(np.asarray(g), num, atol=2e-4)


def test_wrong_passage_count_is_an_error():
  with pytest.raises(ValueError, match="group_size"):
    loss_lib.contrastive_loss(jnp.zeros((4, 8)), jnp.zeros((6, 8)), temperature=0.02, group_size=2)


def test_schedule_warmup_then_constant_or_cosine():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(lr=2e-5, schedule="constant", warmup_ratio=0.06, b1=0.9,
                                       b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  sched = optimizer.make_schedule(cfg, 1000)
  assert optimizer.warmup_steps(cfg, 1000) == 60
  np.testing.assert_allclose([float(sched(s)) for s in (0, 30, 60, 500, 999)],
                             [0.0, 1e-5, 2e-5, 2e-5, 2e-5], rtol=1e-6)
  cfg.schedule = "cosine"
  sched = optimizer.make_schedule(cfg, 1000)
  assert float(sched(60)) == pytest.approx(2e-5) and float(sched(1000)) == pytest.approx(0.0, abs=1e-12)
  cfg.schedule = "linear"
  with pytest.raises(ValueError, match="config.optim.schedule"):
    optimizer.make_schedule(cfg, 10)


def test_weight_decay_skips_norms_and_embeddings():
  params = {"embed_tokens": {"embedding": jnp.ones((8, 4))}, "layers": {"attn_norm": {"scale": jnp.ones((2, 4))},
            "q_proj": {"kernel": jnp.ones((2, 4, 4))}}, "final_norm": {"scale": jnp.ones(4)}}
  mask = optimizer.decay_mask(params)
  assert mask == {"embed_tokens": {"embedding": False}, "layers": {"attn_norm": {"scale": False},
                  "q_proj": {"kernel": True}}, "final_norm": {"scale": False}}


def test_flops_hand_count():
  cfg = dict(hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4)
  # Per layer: q 8*8 + k,v 2*8*4 + o 8*8 + mlp 3*8*16 = 64+64+64+384 = 576 weights; 2 layers.
  assert flops.matmul_params_per_token(cfg) == 1152
  # 2 sequences x 3 tokens: dense 2*1152*6; attention 4*2*3*3*2*4 per layer x 2 layers.
  assert flops.encoder_forward_flops(cfg, 2, 3) == 2 * 1152 * 6 + 2 * (4 * 2 * 3 * 3 * 2 * 4)
  fwd = flops.encoder_forward_flops(cfg, 2, 3) + flops.encoder_forward_flops(cfg, 4, 5)
  sim = 3 * 2 * 2 * 4 * 8
  assert flops.train_step_flops(cfg, 2, 3, 5, 2) == 3 * fwd + sim
  # GradCache's extra forward pass is executed work, not model FLOPs (MFU counts the latter);
  # so are the attention scores the backward recomputes (2 FLOPs x (2*9 + 4*25)
  # pairs x 2 heads x 4 x 2 layers = 3,776).
  assert flops.hardware_step_flops(cfg, 2, 3, 5, 2, grad_cache_chunk=2,
                                   remat_policy="none") == 4 * fwd + sim + 3776
  assert flops.hardware_step_flops(cfg, 2, 3, 5, 2, remat_policy="none") == 3 * fwd + sim + 3776
  assert flops.tokens_per_step(2, 3, 5, 2) == 2 * 3 + 4 * 5


def test_8b_recipe_defaults_follow_the_reference():
  from reasonir_jax.configs import load_config
  c = load_config("llama3_8b")
  assert (c.train.temperature, c.data.group_size, c.train.global_batch_size) == (0.02, 2, 2048)
  assert (c.optim.lr, c.optim.schedule, c.optim.warmup_ratio, c.train.num_steps) == (2e-5, "constant", 0.06, 1000)
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay, c.optim.grad_clip) == (0.9, 0.999, 1e-8, 0.0, 1.0)
  assert c.model.remat_policy != "none" and c.data.max_length == 2048
  assert (c.data.query_max_length, c.data.passage_max_length) == (2048, 2048)
  assert c.data.single_source_batches is True  # one source per global batch, as the reference
  assert c.checkpoint.every_steps == 500


def test_8b_recipe_refuses_the_shipped_sample(tmp_path):
  from reasonir_jax import train
  from reasonir_jax.configs import load_config
  with pytest.raises(ValueError, match=r"--config\.data\.sources.*--config\.init_from.*--config\.data\.tokenizer"):
    train.check_required(load_config("llama3_8b"))
  with pytest.raises(ValueError, match=r"--config\.data\.tokenizer") as e:
    train.check_required(load_config("llama3_8b", ["data.sources=a=gs://b/a-*.tfrecord"]))
  assert "data.sources=" not in str(e.value)
  (tmp_path / "tokenizer.json").write_text("{}")
  train.check_required(load_config("llama3_8b", [  # both given: accepted
      "data.sources=a=gs://b/a-*.tfrecord", f"data.tokenizer={tmp_path}"]))
  train.check_required(load_config("llama3_8b", [
      "data.sources=a=gs://b/a-*.tfrecord", f"init_from={tmp_path}"]))
  train.check_required(load_config("tiny"))  # small configs keep the sample defaults


def test_peak_flops_table_and_metric_writer(tmp_path, capsys):
  from reasonir_jax.training import metrics
  assert metrics.peak_flops_per_device("TPU v5 lite") == 197e12
  assert metrics.peak_flops_per_device("TPU v5p") == 459e12
  assert metrics.peak_flops_per_device("TPU v6 lite") == 918e12
  assert metrics.peak_flops_per_device("TPU v4") == 275e12
  assert metrics.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert metrics.peak_flops_per_device("NVIDIA A100-SXM4-40GB") == 312e12
  assert metrics.peak_flops_per_device("cpu") is None
  assert metrics.peak_flops_per_device("cpu", override=1e12) == 1e12
  meter = metrics.Throughput(num_devices=2, peak_flops=1e12)
  meter.add(examples=16, tokens=1000, flops=2e9)
  report = meter.report()
  # Both are rates over the same interval: mfu / examples_per_s = (2e9 / (2 * 1e12)) / 16.
  assert report["mfu"] / report["examples_per_s"] == pytest.approx(2e9 / 2e12 / 16)
  assert "mfu" not in metrics.Throughput(2, None).report()
  assert "hfu" not in report  # no extra executed FLOPs given
  # GradCache: MFU counts the model FLOPs only, hfu the executed 4/3 of them.
  meter.add(examples=16, tokens=1000, flops=3e9, hardware_flops=4e9)
  report = meter.report()
  assert report["hfu"] / report["mfu"] == pytest.approx(4 / 3)
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(3, {"loss": 1.5, "lr": 1e-5})
  writer.close()
  assert "step 3 loss=1.5 lr=1e-05" in capsys.readouterr().out
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
