"""Preemption: a SIGTERM to a real training process mid-run makes it checkpoint the step it
reached and exit with status 75; the restarted run continues from that step and ends with the
parameters of a run that never stopped, with no step lost or repeated in the logs."""
import re
import signal
import textwrap
import time

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
    from reasonir_jax.configs import load_config
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


# A child trainer through train.main (which ends a process that leaves a save unfinished), with
# each save's commit (the step folder made final) held back `commit_seconds`, as a slow bucket
# would, and steps slowed to 0.5 s from `slow_after`.
SLOW_STORAGE_CHILD = textwrap.dedent("""
    import functools, json, sys, time
    from orbax.checkpoint._src.checkpointers import async_checkpointer
    from reasonir_jax import train
    overrides, workdir, arg = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    commit = async_checkpointer._on_commit_callback
    def slow_commit(tmpdir, *args, **kwargs):
      step = tmpdir.get_final().name
      print(f"commit of step {step} starts", flush=True)
      time.sleep(arg["commit_seconds"])
      commit(tmpdir, *args, **kwargs)
      print(f"commit of step {step} done", flush=True)
    async_checkpointer._on_commit_callback = slow_commit
    def callback(step, state, metrics):
      if step >= arg["slow_after"]:
        time.sleep(0.5)
    train.run = functools.partial(train.run, step_callback=callback)
    train.main(["--config=tiny", f"--workdir={workdir}", *[f"--config.{o}" for o in overrides]])
    """)

SLOW_OVERRIDES = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "train.num_steps=12",
                  "checkpoint.every_steps=3", "checkpoint.keep=2", "train.log_every=1",
                  "data.max_length=48", "data.query_max_length=48", "data.passage_max_length=48",
                  "data.bucket_lengths=(48,)"]


def _read_until(proc, predicate, lines):
  for line in proc.stdout:
    lines.append(line)
    if predicate(line):
      return True
  return False


@pytest.mark.multiprocess
def test_a_save_that_cannot_fit_the_grace_window_never_costs_a_complete_checkpoint(
    make_tiny_config, tmp_path, small_model_overrides, make_child_env, start_child_trainer):
  import json
  from reasonir_jax import train
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.preemption import EXIT_PREEMPTED

  workdir = tmp_path / "spot"
  env = make_child_env(tmp_path)

  def start(grace, commit_seconds, slow_after):
    overrides = [*small_model_overrides, *SLOW_OVERRIDES,
                 f"checkpoint.preemption_grace_seconds={grace}"]
    return start_child_trainer(SLOW_STORAGE_CHILD, overrides, workdir,
                               json.dumps({"commit_seconds": commit_seconds,
                                           "slow_after": slow_after}), tmp_path, env)

  # 1. A 1 s grace window and 2 s commits: once a save has been measured, the notice comes
  #    and no save can fit. The run exits at once; step 3's checkpoint stays the newest.
  proc, out = start(grace=1, commit_seconds=2, slow_after=1), []
  assert _read_until(proc, lambda l: l.startswith("commit of step 3 done"), out), "".join(out)
  assert _read_until(proc, lambda l: STEP_LINE.match(l) is not None, out)
  proc.send_signal(signal.SIGTERM)
  out.append(proc.communicate(timeout=300)[0])
  out = "".join(out)
  assert proc.returncode == EXIT_PREEMPTED, out[-4000:]
  assert "exiting at once" in out and "of the 1 s grace window left" in out, out[-4000:]
  assert ckpt_lib.CheckpointManager(str(workdir)).all_steps() == [3], out[-4000:]

  # 2. The restart resumes from step 3. With a 30 s window it saves at the notice, but the
  #    machine goes (SIGKILL) 2 s into that save: the partial step must never be resumed from.
  proc, out = start(grace=30, commit_seconds=4, slow_after=0), []
  assert _read_until(proc, lambda l: l.startswith("commit of step 6 done"), out), "".join(out)
  proc.send_signal(signal.SIGTERM)
  assert _read_until(proc, lambda l: l.startswith("commit of step") and "starts" in l, out), \
      "".join(out)
  saving = int(out[-1].split()[3])
  time.sleep(2)
  proc.kill()
  out.append(proc.communicate(timeout=60)[0])
  out = "".join(out)
  assert "training 12 steps from step 3 " in out, out[-4000:]
  assert saving > 6 and "commit of step %d done" % saving not in out, out[-4000:]
  assert ckpt_lib.CheckpointManager(str(workdir)).all_steps() == [3, 6]

  # 3. The next restart resumes from step 6, loses only the steps after it, and ends with the
  #    parameters of a run that was never interrupted.
  proc = start(grace=30, commit_seconds=0, slow_after=100)
  last = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, last[-4000:]
  assert "training 12 steps from step 6 " in last, last[-4000:]
  assert [int(s) for s in STEP_LINE.findall(last)] == list(range(7, 13))
  reference = train.run(make_tiny_config(*SLOW_OVERRIDES), str(tmp_path / "straight"))
  from reasonir_jax import sharding as shd
  from reasonir_jax.training.step import build_trainer
  cfg = make_tiny_config(*SLOW_OVERRIDES)
  manager = ckpt_lib.CheckpointManager(str(workdir))
  state, _ = manager.restore(build_trainer(cfg, shd.make_mesh(cfg.mesh)).abstract_state())
  manager.close()
  assert int(state.step) == 12
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params),
                               jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=jax.tree_util.keystr(path))
