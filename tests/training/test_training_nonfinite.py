"""A tiny training run fed NaN batches: a lone one is skipped and counted, three in a row stop
the run with an error naming the steps and their rows, and the checkpoint on disk is the last
good state, finite."""
import numpy as np
import pytest

import jax

# One bucket length (one compile); vocab: the sample tokenizer's.
RUN = ["model.vocab_size=2048", "mesh.shape=(8,1,1)", "train.num_steps=8", "train.log_every=1",
       "checkpoint.every_steps=3", "data.max_length=48", "data.query_max_length=48",
       "data.passage_max_length=48", "data.bucket_lengths=(48,)"]


class _Poisoning:
  """The real input pipeline, with batches number `poisoned` (1-based) marked with the poison id."""

  def __init__(self, inner, poisoned, poison_id):
    self.inner, self.poisoned, self.poison_id, self.n = inner, set(poisoned), poison_id, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.inner)
    self.n += 1
    if self.n in self.poisoned:
      ids = batch["passage"]["input_ids"]
      batch["passage"]["input_ids"] = jax.device_put(ids.at[0, 1].set(self.poison_id),
                                                     ids.sharding)
    return batch

  def __getattr__(self, name):  # get_state, set_state, stats, close, host_iter
    return getattr(self.inner, name)


@pytest.mark.slow
def test_nan_batches_are_skipped_then_stop_the_run_with_a_finite_checkpoint(
    make_tiny_config, tmp_path, poisoned_encoder, monkeypatch, capsys):
  from reasonir_jax import train
  from reasonir_jax.data import pipeline
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.nonfinite import NonFiniteError
  from reasonir_jax.training.step import build_trainer

  real = pipeline.make_train_iterator
  monkeypatch.setattr(pipeline, "make_train_iterator",
                      lambda *a, **k: _Poisoning(real(*a, **k), (2, 4, 5, 6), poisoned_encoder))
  params_at = {}
  callback = lambda step, state, metrics: params_at.__setitem__(step, jax.device_get(state.params))
  cfg = make_tiny_config(*RUN)
  workdir = tmp_path / "run"
  with pytest.raises(NonFiniteError) as err:
    train.run(cfg, str(workdir), step_callback=callback)
  message = str(err.value)
  assert err.value.step == 6 and [s for s, _ in err.value.batches] == [4, 5, 6]
  assert "step 6: 3 consecutive steps (from step 4)" in message
  assert "max_consecutive_nonfinite=3" in message
  # Each batch's records: source, shuffled positions, file, offset and row id.
  assert message.count("source 'sample' records") == 3 and "row_id='sample-" in message
  assert ".tfrecord@" in message
  out = capsys.readouterr().out
  assert "step 1 " in out and "skipped_nonfinite_steps=1" in out.split("step 3 ")[1].split("\n")[0]
  assert 6 not in params_at  # stopped before its callback (and before any save)

  manager = ckpt_lib.CheckpointManager(str(workdir), cfg.checkpoint)
  assert manager.all_steps() == [3]  # not 6: skipped steps are never saved
  trainer = build_trainer(cfg, jax.sharding.Mesh(np.asarray(jax.devices()).reshape(8, 1, 1),
                                                 ("data", "fsdp", "tensor")))
  state, _ = manager.restore(trainer.abstract_state())
  manager.close()
  saved, last_good = jax.tree.leaves(state.params), jax.tree.leaves(params_at[5])
  for x, y in zip(saved, last_good):
    assert np.isfinite(np.asarray(x)).all()
    np.testing.assert_array_equal(np.asarray(x), y)  # steps 4 and 5 changed nothing
  np.testing.assert_array_equal(jax.tree.leaves(params_at[2])[0], jax.tree.leaves(params_at[1])[0])


def test_guard_counts_runs_and_describes_unknown_iterators():
  from reasonir_jax.training.nonfinite import NonFiniteError, NonFiniteGuard, describe_rows
  with pytest.raises(ValueError, match="max_consecutive_nonfinite must be >= 1, got 0"):
    NonFiniteGuard(0)
  guard = NonFiniteGuard(2)
  guard.skipped(3, "rows a", float("nan"), float("nan"))
  guard.finite()  # a finite step ends the run of skips
  guard.skipped(5, "rows b", float("nan"), float("inf"))
  with pytest.raises(NonFiniteError, match=r"step 6: 2 consecutive steps \(from step 5\)") as err:
    guard.skipped(6, "rows c", 1.0, float("inf"))
  assert err.value.batches == [(5, "rows b"), (6, "rows c")] and guard.total == 3
  assert "step 5: rows b\n  step 6: rows c" in str(err.value)
  # An iterator without the pipeline's cursors: its states are quoted as they are.
  assert describe_rows(object(), {"i": 4}, {"i": 5}) == (
      "input pipeline state before the batch {'i': 4}, after it {'i': 5}")
