"""The train step on the fake 8-device mesh: same numbers on every mesh shape, GradCache equal to
the full batch, and the loss falls on a fixed batch."""
import numpy as np
import pytest

import jax

from reasonir_jax import sharding as shd
from reasonir_jax.training.step import build_trainer

MESH_SHAPES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2))


def host_params(config):
  """The encoder's parameters built eagerly (cheaper than a sharded init per mesh in tests)."""
  from flax import nnx
  from reasonir_jax.model import LlamaEncoder, ModelConfig
  model = LlamaEncoder(ModelConfig.from_config(config.model), rngs=nnx.Rngs(0))
  return nnx.split(model, nnx.Param)[1]


def _loss_and_grads(config, batch, params):
  trainer = build_trainer(config, shd.make_mesh(config.mesh))
  params = jax.device_put(params, trainer.param_shardings)
  (loss, metrics), grads = jax.jit(trainer.loss_and_grads)(params, trainer.place_batch(batch))
  return trainer, float(loss), jax.device_get(metrics), jax.device_get(grads)


def _assert_tree_close(a, b, rtol=1e-5):
  """fp32 agreement to 1e-5, relative to each tensor's scale (sums run in another order)."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()),
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def results(make_tiny_config, make_random_batch):
  tiny_config, random_batch = make_tiny_config, make_random_batch
  batch = random_batch(16, 3, 8, 12, seed=1)
  out = {}
  params = host_params(tiny_config())
  for shape in MESH_SHAPES:
    cfg = tiny_config(f"mesh.shape={shape}", "data.group_size=3")
    trainer, loss, metrics, grads = _loss_and_grads(cfg, batch, params)
    assert dict(trainer.mesh.shape) == dict(zip(("data", "fsdp", "tensor"), shape))
    out[shape] = (loss, metrics, grads)
  cfg = tiny_config("mesh.shape=(2,4,1)", "data.group_size=3", "train.grad_cache_chunk=8")
  trainer, loss, metrics, grads = _loss_and_grads(cfg, batch, params)
  assert trainer.chunk == 8
  out["grad_cache"] = (loss, metrics, grads)
  return out


def test_loss_and_grads_equal_on_every_mesh_shape(results):
  ref_loss, ref_metrics, ref_grads = results[MESH_SHAPES[0]]
  assert np.isfinite(ref_loss) and ref_loss > 0
  assert float(np.abs(jax.tree.leaves(ref_grads)[0]).max()) > 0
  for shape in MESH_SHAPES[1:]:
    loss, metrics, grads = results[shape]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=str(shape))
    np.testing.assert_allclose(metrics["accuracy"], ref_metrics["accuracy"])
    _assert_tree_close(grads, ref_grads)


def test_grad_cache_equals_full_batch_with_the_model(results):
  loss, metrics, grads = results[(2, 4, 1)]
  loss_gc, metrics_gc, grads_gc = results["grad_cache"]
  np.testing.assert_allclose(loss_gc, loss, rtol=1e-5)
  np.testing.assert_allclose(metrics_gc["pos_sim"], metrics["pos_sim"], rtol=1e-5)
  _assert_tree_close(grads_gc, grads)


def test_bad_mesh_or_batch_is_a_clear_error(make_tiny_config):
  with pytest.raises(ValueError, match="mesh.shape"):
    shd.make_mesh(make_tiny_config("mesh.shape=(3,1,1)").mesh)
  cfg = make_tiny_config("mesh.shape=(8,1,1)", "train.global_batch_size=12")
  with pytest.raises(ValueError, match="global_batch_size"):
    build_trainer(cfg, shd.make_mesh(cfg.mesh))
  cfg = make_tiny_config("mesh.shape=(8,1,1)", "train.grad_cache_chunk=4")
  with pytest.raises(ValueError, match="grad_cache_chunk"):
    build_trainer(cfg, shd.make_mesh(cfg.mesh))


@pytest.mark.slow
def test_steps_lower_the_loss_on_a_fixed_batch(make_tiny_config, make_random_batch):
  cfg = make_tiny_config("mesh.shape=(8,1,1)", "optim.warmup_ratio=0.0", "train.num_steps=8")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  state = trainer.state_from_params(host_params(cfg))
  batch = trainer.place_batch(make_random_batch(16, 2, 8, 12, seed=2))
  losses = []
  for _ in range(6):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 6
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics["grad_norm"]) > 0 and float(metrics["lr"]) == pytest.approx(1e-3)
  # The donated state comes back in the same shardings.
  assert jax.tree.leaves(state.params)[0].sharding == jax.tree.leaves(trainer.param_shardings)[0]


@pytest.mark.parametrize("grad_cache_chunk", [0, 8])
@pytest.mark.slow
def test_a_non_finite_step_changes_nothing_and_the_next_step_updates_normally(
    make_tiny_config, make_random_batch, poisoned_encoder, grad_cache_chunk):
  """Parameters and optimiser state bitwise unchanged after a NaN batch, the skip flagged, and
  [good, NaN, good] ends exactly where [good, good] does (the schedule did not move on); full
  batch and GradCache."""
  cfg = make_tiny_config("mesh.shape=(2,4,1)", "train.num_steps=40",  # 4 warmup steps
                         f"train.grad_cache_chunk={grad_cache_chunk}")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  assert trainer.chunk == grad_cache_chunk
  good = [trainer.place_batch(make_random_batch(16, 2, 8, 12, seed=s)) for s in (4, 5)]
  poisoned = make_random_batch(16, 2, 8, 12, seed=6)
  poisoned["passage"]["input_ids"][3, 4] = poisoned_encoder
  poisoned = trainer.place_batch(poisoned)
  host = lambda state: jax.device_get((state.params, state.opt_state))

  def run(batches):
    state = trainer.state_from_params(host_params(cfg))
    out = []
    for batch in batches:
      before = host(state)
      state, metrics = trainer.train_step(state, batch)
      out.append((before, host(state), jax.device_get(metrics)))
    return state, out

  state, out = run([good[0], poisoned, good[1]])
  before, after, metrics = out[1]
  assert not np.isfinite(metrics["loss"]) and not np.isfinite(metrics["grad_norm"])
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)
  assert [m["skipped_nonfinite"] for _, _, m in out] == [0.0, 1.0, 0.0]
  assert int(state.step) == 3  # batches consumed; the optimiser applied 2 updates
  reference, ref_out = run(good)
  for x, y in zip(jax.tree.leaves(host(state)), jax.tree.leaves(host(reference))):
    np.testing.assert_array_equal(x, y)
  # The third step ran at the second step's learning rate (warmup: it differs from the third's).
  assert out[2][2]["lr"] == ref_out[1][2]["lr"] != float(trainer.schedule(2))
