"""Preemption: a SIGTERM to a real training process mid-run makes it checkpoint the step it
reached and exit with status 75; the restarted run continues from that step and ends with the
parameters of a run that never stopped, with no step lost or repeated in the logs. When a save
cannot fit the grace window the run exits at once, and a machine lost during the preemption save
leaves no partial step to resume from.

The children signal themselves from their step callback (or the commit hook) at a chosen step,
so where each run stops is deterministic and nothing waits on sleeps or on the parent's timing;
each reference run trains in this process while the child runs."""
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

# SIGTERM to itself after step `term_at` (-1: never), as the VM's notice arrives mid-run: the
# handler runs before the callback returns, so the run stops right after that step.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    overrides, workdir, term_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def callback(step, state, metrics):
      if step == term_at:
        os.kill(os.getpid(), signal.SIGTERM)
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
  env = make_child_env()
  proc = start_child_trainer(CHILD, overrides, workdir, 3, tmp_path, env)  # SIGTERM at step 3
  reference = train.run(make_tiny_config(*RUN_OVERRIDES), str(tmp_path / "straight"))
  first = proc.communicate(timeout=600)[0]
  assert proc.returncode == EXIT_PREEMPTED, first[-4000:]
  stopped = ckpt_lib.CheckpointManager(str(workdir)).all_steps()
  first_steps = [int(s) for s in STEP_LINE.findall(first)]
  assert stopped == [first_steps[-1]] and 3 <= stopped[0] < 8, (stopped, first_steps)

  resumed = start_child_trainer(CHILD, overrides, workdir, -1, tmp_path, env)
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
# would. After step `term_at` it waits until its CheckpointManager has measured a committed save,
# then SIGTERMs itself (the notice); the commit of step `die_in_commit_of` SIGKILLs the process
# (the machine goes in the middle of that save: its files written, the step never made final).
SLOW_STORAGE_CHILD = textwrap.dedent("""
    import functools, json, os, signal, sys, threading, time
    from orbax.checkpoint._src.checkpointers import async_checkpointer
    from reasonir_jax import train
    from reasonir_jax.training import checkpoint as ckpt_lib
    overrides, workdir, arg = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    commit = async_checkpointer._on_commit_callback
    def slow_commit(tmpdir, *args, **kwargs):
      step = tmpdir.get_final().name
      print(f"commit of step {step} starts", flush=True)
      if int(step) == arg["die_in_commit_of"]:
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(arg["commit_seconds"])
      commit(tmpdir, *args, **kwargs)
      print(f"commit of step {step} done", flush=True)
    async_checkpointer._on_commit_callback = slow_commit
    measured = threading.Event()
    committed = ckpt_lib.CheckpointManager._committed
    def seen(self, *args, **kwargs):
      committed(self, *args, **kwargs)
      measured.set()
    ckpt_lib.CheckpointManager._committed = seen
    def callback(step, state, metrics):
      if step == arg["term_at"]:
        assert measured.wait(300), "no save was committed"
        os.kill(os.getpid(), signal.SIGTERM)
    train.run = functools.partial(train.run, step_callback=callback)
    train.main(["--config=tiny", f"--workdir={workdir}", *[f"--config.{o}" for o in overrides]])
    """)

SLOW_OVERRIDES = ["model.vocab_size=2048", "mesh.shape=(4,2,1)", "train.num_steps=12",
                  "checkpoint.every_steps=3", "checkpoint.keep=2", "train.log_every=1",
                  "data.max_length=48", "data.query_max_length=48", "data.passage_max_length=48",
                  "data.bucket_lengths=(48,)"]
COMMIT_STARTS = re.compile(r"^commit of step (\d+) starts", re.M)


@pytest.mark.multiprocess
def test_a_save_that_cannot_fit_the_grace_window_never_costs_a_complete_checkpoint(
    make_tiny_config, tmp_path, small_model_overrides, make_child_env, start_child_trainer):
  import json
  from reasonir_jax import train
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.preemption import EXIT_PREEMPTED

  workdir = tmp_path / "spot"
  env = make_child_env()

  def start(grace, commit_seconds, term_at=-1, die_in_commit_of=-1):
    overrides = [*small_model_overrides, *SLOW_OVERRIDES,
                 f"checkpoint.preemption_grace_seconds={grace}"]
    return start_child_trainer(SLOW_STORAGE_CHILD, overrides, workdir,
                               json.dumps({"commit_seconds": commit_seconds, "term_at": term_at,
                                           "die_in_commit_of": die_in_commit_of}), tmp_path, env)

  # 1. A 1 s grace window and 1 s commits (a save takes longer than the whole window): once step
  #    3's save has been measured, the notice comes after step 4 and no save can fit. The run
  #    exits at once; step 3's checkpoint stays the newest.
  proc = start(grace=1, commit_seconds=1, term_at=4)
  reference = train.run(make_tiny_config(*SLOW_OVERRIDES), str(tmp_path / "straight"))
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == EXIT_PREEMPTED, out[-4000:]
  assert "commit of step 3 done" in out and "preempted at step 4" in out, out[-4000:]
  assert "exiting at once" in out and "of the 1 s grace window left" in out, out[-4000:]
  assert ckpt_lib.CheckpointManager(str(workdir)).all_steps() == [3], out[-4000:]

  # 2. The restart resumes from step 3. With a 30 s window it saves at the notice (after step 7,
  #    step 6's save committed), but the machine goes (SIGKILL) during that save: the partial
  #    step must never be resumed from.
  proc = start(grace=30, commit_seconds=0, term_at=7, die_in_commit_of=7)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == -signal.SIGKILL, out[-4000:]
  assert "training 12 steps from step 3 " in out and "commit of step 6 done" in out, out[-4000:]
  saving = int(COMMIT_STARTS.findall(out)[-1])
  assert saving > 6 and "commit of step %d done" % saving not in out, out[-4000:]
  assert ckpt_lib.CheckpointManager(str(workdir)).all_steps() == [3, 6]

  # 3. The next restart resumes from step 6, loses only the steps after it, and ends with the
  #    parameters of a run that was never interrupted.
  proc = start(grace=30, commit_seconds=0)
  last = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, last[-4000:]
  assert "training 12 steps from step 6 " in last, last[-4000:]
  assert [int(s) for s in STEP_LINE.findall(last)] == list(range(7, 13))
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
