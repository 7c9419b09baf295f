"""No compile after step 1: every step shape is compiled before the run's first step."""
import logging

import jax
import numpy as np
import pytest

RUN = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "train.num_steps=8",
       "checkpoint.every_steps=100", "train.log_every=1", "data.max_length=64",
       "data.query_max_length=64", "data.passage_max_length=64", "data.bucket_lengths=(32,64)"]


class _Compiles(logging.Handler):
  """Records jax's compile log lines (jax_log_compiles), with the step they came after."""

  def __init__(self):
    super().__init__()
    self.step = 0
    self.lines = []

  def emit(self, record):
    msg = record.getMessage()
    if "_train_step" in msg and "ompil" in msg:
      self.lines.append((self.step, msg))


@pytest.mark.slow
def test_every_step_shape_is_compiled_before_the_first_step(make_tiny_config, tmp_path):
  from reasonir_jax import train
  from reasonir_jax.training.step import step_shapes
  config = make_tiny_config(*RUN, "train.precompile=True")
  assert len(step_shapes(config)) == 4
  compiles = _Compiles()
  logging.getLogger().addHandler(compiles)
  precompiled = []
  real_log = train.log.info

  def callback(step, state, metrics):
    compiles.step = step

  try:
    jax.config.update("jax_log_compiles", True)
    train.log.info = lambda msg, *a: (precompiled.append(msg % a if a else msg), real_log(msg, *a))
    state = train.run(config, str(tmp_path / "pre"), step_callback=callback)
  finally:
    jax.config.update("jax_log_compiles", False)
    train.log.info = real_log
    logging.getLogger().removeHandler(compiles)
  assert sum("compiled the train step for shape" in m for m in precompiled) == 4, precompiled
  assert compiles.lines and all(step == 0 for step, _ in compiles.lines), compiles.lines
  # The same numbers as the jit compiling on demand.
  plain = train.run(make_tiny_config(*RUN), str(tmp_path / "plain"))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
