"""Multi-host exact resume: a real 2-process jax.distributed CPU `train.run` (real data pipeline,
Orbax checkpoints) is killed with SIGKILL (once its step-2 checkpoint is committed), restarted,
preempted with SIGTERM (both processes stop at the sync step JAX's preemption service agrees on,
checkpoint it and exit with 75), restarted again, and ends bitwise equal to an uninterrupted
2-process run (shared with the local checkpoint tier's test) and equal (rtol 1e-5) to a 1-process
run fed the same global batches. Each process restores its own data-iterator state; resuming on
another process count fails with an error that says what to do."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
from multihost_util import (  # noqa: E402  pylint: disable=wrong-import-position
    TWO_PROCESS_RUN, free_port, two_process_env, uninterrupted_two_process_run)

OVERRIDES = [*TWO_PROCESS_RUN, "checkpoint.every_steps=2", "checkpoint.keep=5"]

# SIGKILL: a crash at step kill_at once the last checkpoint before it is committed (where the
# restart must resume). SIGTERM: the preemption notice every host of a slice gets.
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, workdir, kill_at, overrides, sig = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                                      int(sys.argv[4]), json.loads(sys.argv[5]),
                                                      getattr(signal, sys.argv[6]))
    distributed.initialize(address, 2, pid)
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    config = load_config("tiny", overrides)
    every = config.checkpoint.every_steps
    committed = os.path.join(workdir, "checkpoints", str(kill_at // every * every))
    def callback(step, state, metrics):
      if step == kill_at:  # both processes, as a preempted slice's hosts each get SIGTERM
        deadline = time.monotonic() + 300
        while sig == signal.SIGKILL and not os.path.isdir(committed) and time.monotonic() < deadline:
          time.sleep(0.02)
        os.kill(os.getpid(), sig)
      if sig == signal.SIGTERM and step >= kill_at:
        # The preemption notice reaches the other process asynchronously; real steps take
        # seconds, these take milliseconds and could finish the run before the sync step.
        time.sleep(1.0)
    train.run(config, workdir, step_callback=callback)
    """)


def _two_processes(tmp_path, env, workdir, kill_at, sig="SIGKILL"):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  env = two_process_env(env)
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen([sys.executable, str(script), address, str(pid), str(workdir),
                            str(kill_at), json.dumps(OVERRIDES), sig], env=env, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for pid in (0, 1)]


def _wait(procs, codes):
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode in codes, log[-4000:]
  return logs


class _SameBatchesAsTwoProcesses:
  """One process's global batches built from the two per-process host iterators (process 0's
  rows, then process 1's: the rows each process holds in the 2-process run's mesh)."""

  def __init__(self, config, tokenizer):
    from reasonir_jax.data.pipeline import make_host_iterator
    self.hosts = [make_host_iterator(config, tokenizer, process_index=i, process_count=2,
                                     local_batch_size=config.train.global_batch_size // 2,
                                     prefetch=0) for i in (0, 1)]

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(h) for h in self.hosts]
    return {side: {k: np.concatenate([p[side][k] for p in parts]) for k in parts[0][side]}
            for side in parts[0]}

  def get_state(self):
    return [h.get_state() for h in self.hosts]

  def set_state(self, state):
    for h, s in zip(self.hosts, state):
      h.set_state(s)

  def stats(self):
    return self.hosts[0].stats()


def _params(workdir, step=None):
  from reasonir_jax.training import checkpoint as ckpt_lib
  params, _, _ = ckpt_lib.load_params_for_export(str(workdir), step)
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.multiprocess
def test_two_process_resume_is_exact_and_matches_one_process(tmp_path, make_child_env):
  from reasonir_jax import sharding as shd
  from reasonir_jax import train
  from reasonir_jax.configs import load_config
  from reasonir_jax.data.pipeline import TrainIterator
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training.step import build_trainer

  env = make_child_env()
  straight = uninterrupted_two_process_run(env, TWO_PROCESS_RUN)
  killed = tmp_path / "killed"
  procs = _two_processes(tmp_path, env, killed, 3)
  # One process, 8 devices, the same global batches, trained here while the children run.
  cfg = load_config("tiny", OVERRIDES)
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  one = tmp_path / "one"
  tokenizer = train.resolve_tokenizer(cfg)
  data = TrainIterator(_SameBatchesAsTwoProcesses(cfg, tokenizer), trainer.mesh,
                       trainer.batch_sharding.spec, process_count=1)
  train.run(cfg, str(one), data_iterator=data)
  _wait(procs, (-signal.SIGKILL,))
  manager = ckpt_lib.CheckpointManager(str(killed))
  assert manager.latest_step() == 2, manager.all_steps()
  # Each process wrote its own iterator state (Grain's item), and they differ (their shares).
  states = [json.loads((killed / "checkpoints" / "2" / "data" / f"process_{i}-of-2.json").read_text())
            for i in (0, 1)]
  assert [s["process_index"] for s in states] == [0, 1]
  # Restoring a 2-process checkpoint in 1 process says what to do.
  with pytest.raises(ValueError, match="written by 2 processes.*resume with 2 processes"):
    manager.restore(trainer.abstract_state())
  manager.close()

  from reasonir_jax.training.preemption import EXIT_PREEMPTED
  logs = _wait(_two_processes(tmp_path, env, killed, 4, "SIGTERM"), (EXIT_PREEMPTED,))
  assert "from step 2" in logs[0], logs[0][-3000:]
  manager = ckpt_lib.CheckpointManager(str(killed))
  preempted_at = manager.latest_step()
  manager.close()
  assert 4 <= preempted_at < 8 and f"preempted: checkpoint of step {preempted_at}" in logs[1]
  logs = _wait(_two_processes(tmp_path, env, killed, -1), (0,))
  assert f"from step {preempted_at}" in logs[0], logs[0][-3000:]
  got, want = _params(killed), _params(straight)
  assert len(want) > 5 and all(np.isfinite(v).all() for v in want.values())
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)

  # The 1-process run: the same parameters up to float rounding.
  single = _params(one)
  early = _params(killed, 2)  # 6 steps earlier: far outside the tolerance (the check can fail)
  assert sum(not np.allclose(early[n], want[n], rtol=1e-5, atol=1e-5 * float(np.abs(want[n]).max()))
             for n in want) >= len(want) // 2
  for name in want:
    np.testing.assert_allclose(single[name], want[name], rtol=1e-5,
                               atol=1e-5 * float(np.abs(want[name]).max()), err_msg=name)
