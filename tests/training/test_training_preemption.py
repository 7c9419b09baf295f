"""Preemption: a SIGTERM to a real training process mid-run makes it checkpoint the step it
reached and exit with status 75; the restarted run continues from that step and ends with the
parameters of a run that never stopped, with no step lost or repeated in the logs."""
import re
import signal
import textwrap

import jax
import numpy as np
import pytest

# No periodic checkpoint before the end: only the preemption one can make the resume work.
RUN_OVERRIDES = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "train.num_steps=8", "checkpoint.every_steps=100",
                 "train.log_every=1", "data.max_length=48", "data.query_max_length=48",
                 "data.passage_max_length=48", "data.bucket_lengths=(48,)"]

CHILD = textwrap.dedent("""
    import json, sys, time
    from reasonir_jax import train
    from reasonir_jax.config import load_config
    overrides, workdir, slow_after = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def callback(step, state, metrics):
      if step >= slow_after:
        time.sleep(0.5)  # leave the parent time to send SIGTERM mid-run
    train.run(load_config("tiny", overrides), workdir, step_callback=callback)
    """)

STEP_LINE = re.compile(r"^step (\d+) ", re.M)


@pytest.mark.multiprocess
def test_sigterm_checkpoints_exits_75_and_resumes_exactly(make_tiny_config, tmp_path,
                                                         small_model_overrides, make_child_env,
                                                         start_child_trainer):
  from reasonir_jax import train
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.preemption import EXIT_PREEMPTED

  overrides = [*small_model_overrides, *RUN_OVERRIDES]
  workdir = tmp_path / "preempted"
  env = make_child_env(tmp_path)
  proc = start_child_trainer(CHILD, overrides, workdir, 2, tmp_path, env)
  first = []
  for line in proc.stdout:  # SIGTERM once step 3 is logged
    first.append(line)
    if line.startswith("step 3 "):
      proc.send_signal(signal.SIGTERM)
      break
  first.append(proc.communicate(timeout=600)[0])
  first = "".join(first)
  assert proc.returncode == EXIT_PREEMPTED, first[-4000:]
  stopped = ckpt_lib.CheckpointManager(str(workdir)).all_steps()
  first_steps = [int(s) for s in STEP_LINE.findall(first)]
  assert stopped == [first_steps[-1]] and 3 <= stopped[0] < 8, (stopped, first_steps)

  reference = train.run(make_tiny_config(*RUN_OVERRIDES), str(tmp_path / "straight"))

  resumed = start_child_trainer(CHILD, overrides, workdir, 100, tmp_path, env)
  second = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, second[-4000:]
  second_steps = [int(s) for s in STEP_LINE.findall(second)]
  assert first_steps + second_steps == list(range(1, 9)), (first_steps, second_steps)

  manager = ckpt_lib.CheckpointManager(str(workdir))
  from reasonir_jax import sharding as shd
  from reasonir_jax.training.step import build_trainer
  cfg = make_tiny_config(*RUN_OVERRIDES)
  state, _ = manager.restore(build_trainer(cfg, shd.make_mesh(cfg.mesh)).abstract_state())
  manager.close()
  assert int(state.step) == 8
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(reference.params))
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params),
                               jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
