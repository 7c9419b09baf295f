"""Per-row loss weights: the weighted InfoNCE and its gradients against a direct reference, all-ones
weights bitwise equal to the unweighted loss, and the trainer's weighted loss and gradients equal
with and without GradCache, padded and packed, on every mesh shape."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasonir_jax.training import loss as loss_lib
from tests.training.test_training_packing import PACKED, _assert_same, _host_params, _run

T, G = 0.05, 3


def _normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(b, seed=0):
  rng = np.random.default_rng(seed)
  q = _normalise(rng.normal(size=(b, 8))).astype(np.float32)
  p = _normalise(rng.normal(size=(b * G, 8))).astype(np.float32)
  return jnp.asarray(q), jnp.asarray(p)


def direct_weighted_loss(q, p, w):
  """sum_i w_i * -log softmax(q_i . p / T)[i*G] / sum_i w_i, one row at a time."""
  total = 0.0
  for i in range(q.shape[0]):
    logits = (p @ q[i]) / T
    total += w[i] * (jax.nn.logsumexp(logits) - logits[i * G])
  return total / jnp.sum(w)


def _weighted(q, p, w):
  return loss_lib.contrastive_loss(q, p, temperature=T, group_size=G, weights_b=w)[0]


def test_weighted_loss_and_gradients_equal_a_direct_reference():
  q, p = _embeddings(6)
  w = jnp.asarray([0.0, 1.0, 2.5, 0.25, 1.0, 3.0], jnp.float32)
  # float64 NumPy value of the weighted mean
  logits = np.asarray(q, np.float64) @ np.asarray(p, np.float64).T / T
  nll = np.log(np.exp(logits).sum(1)) - logits[np.arange(6), np.arange(6) * G]
  np.testing.assert_allclose(float(_weighted(q, p, w)), float(np.sum(np.asarray(w) * nll) / np.sum(w)), rtol=1e-5)
  assert abs(float(_weighted(q, p, w)) - float(nll.mean())) > 1e-3  # the weights matter
  ours = jax.grad(_weighted, argnums=(0, 1))(q, p, w)
  ref = jax.grad(direct_weighted_loss, argnums=(0, 1))(q, p, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert not np.any(np.asarray(ours[0])[0])  # a row of weight 0 gets no gradient through its query


@pytest.mark.parametrize("shape", [None, (2, 4), (8, 1)])
def test_all_ones_weights_equal_the_unweighted_loss_bitwise(shape):
  """The loss bitwise on every mesh; its gradient bitwise unsharded."""
  q, p = _embeddings(8, seed=1)
  w = jnp.ones(8, jnp.float32)
  if shape is not None:  # rows sharded over the batch axes, as in the train step
    mesh = Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp"))
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    q, p, w = (jax.device_put(x, rows) for x in (q, p, w))
  plain = jax.jit(jax.value_and_grad(lambda q, p: loss_lib.contrastive_loss(
      q, p, temperature=T, group_size=G)[0], argnums=(0, 1)))(q, p)
  ones = jax.jit(jax.value_and_grad(_weighted, argnums=(0, 1)))(q, p, w)
  assert float(plain[0]) == float(ones[0])
  for a, b in zip(plain[1], ones[1]):
    if shape is None:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:  # the sharded backward is partitioned with the extra input: equal to float32 rounding
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_all_zero_weights_give_zero_loss_and_gradient():
  q, p = _embeddings(4, seed=2)
  loss, grads = jax.value_and_grad(_weighted, argnums=(0, 1))(q, p, jnp.zeros(4, jnp.float32))
  assert float(loss) == 0.0 and not any(np.any(np.asarray(g)) for g in grads)


def _weighted_batch(make_random_batch, seed=3):
  batch = make_random_batch(32, G, 8, 12, seed=seed)
  batch["row"]["weight"] = np.random.default_rng(seed).uniform(0.0, 3.0, size=32).astype(np.float32)
  batch["row"]["weight"][:4] = 0.0
  return batch


def test_trainer_all_ones_weights_equal_no_weights(make_tiny_config, make_random_batch):
  """Through the whole step the two programs differ (one more input), and XLA may round the encoder
  differently by an ulp; the loss itself is bitwise the same (test above)."""
  batch = make_random_batch(16, G, 8, 12, seed=4)
  params = _host_params(make_tiny_config())
  config = make_tiny_config("mesh.shape=(2,4,1)", f"data.group_size={G}")
  with_ones = _run(config, batch, params)
  without = _run(config, {k: v for k, v in batch.items() if k != "row"}, params)
  _assert_same(with_ones, without, rtol=1e-6)


def test_trainer_weighted_loss_equals_the_direct_reference(make_tiny_config, make_random_batch):
  """The trainer's weighted loss is the weighted mean of its own per-row losses (weights moved to
  the reference's sum; the embeddings are the trainer's)."""
  from reasonir_jax import sharding as shd
  from reasonir_jax.training.step import build_trainer
  batch = _weighted_batch(make_random_batch)
  config = make_tiny_config("mesh.shape=(8,1,1)", "train.global_batch_size=32", f"data.group_size={G}",
                            f"train.temperature={T}")
  trainer = build_trainer(config, shd.make_mesh(config.mesh))
  params = jax.device_put(_host_params(config), trainer.param_shardings)
  placed = trainer.place_batch(batch)
  q = trainer.encode(params, placed["query"], 32)
  p = trainer.encode(params, placed["passage"], 32 * G)
  (loss, _), _ = jax.jit(trainer.loss_and_grads)(params, placed)
  np.testing.assert_allclose(float(loss), float(direct_weighted_loss(q, p, jnp.asarray(batch["row"]["weight"]))),
                             rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
@pytest.mark.slow
def test_weighted_grad_cache_and_packing_equal_full_batch_on_every_mesh(make_tiny_config, make_random_batch,
                                                                        shape):
  batch = _weighted_batch(make_random_batch)
  params = _host_params(make_tiny_config())
  common = ("train.global_batch_size=32", f"data.group_size={G}")
  reference = _run(make_tiny_config("mesh.shape=(8,1,1)", *common), batch, params)
  unweighted = _run(make_tiny_config("mesh.shape=(8,1,1)", *common),
                    {k: v for k, v in batch.items() if k != "row"}, params)
  assert abs(reference[0] - unweighted[0]) > 1e-4  # the weights reach the loss
  runs = {"padded": (), "padded GradCache": ("train.grad_cache_chunk=16",), "packed": PACKED,
          "packed GradCache": (*PACKED, "train.grad_cache_chunk=16")}
  for name, overrides in runs.items():
    if shape == (8, 1, 1) and name == "padded":
      continue  # the reference itself
    got = _run(make_tiny_config(f"mesh.shape={shape}", *common, *overrides), batch, params)
    _assert_same(got, reference)
