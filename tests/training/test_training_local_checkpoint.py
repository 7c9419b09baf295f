"""The local checkpoint tier (training/local_checkpoint.py): a restart on the same hosts resumes
from each process's own local step when it is newer than the persistent one and ends bitwise
equal to a run that never stopped; a host whose local disk is empty (a replaced host) makes every
process fall back to the persistent tier; a partial or foreign local step is never read. The
2-process run that never stopped is shared with test_training_multihost_resume.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))
from multihost_util import (  # noqa: E402  pylint: disable=wrong-import-position
    TWO_PROCESS_RUN, free_port, two_process_env, uninterrupted_two_process_run)

EVERY = 4  # a persistent save every EVERY steps, a local one on every other step
# 8 steps on a (4,2,1) mesh, one bucket length (one compilation per run).
RUN = [*TWO_PROCESS_RUN, f"checkpoint.every_steps={EVERY}", "checkpoint.keep=2"]

# argv: coordinator address ("" for one process), process id, process count, workdir, local dir,
# the step to die at (-1: never), overrides as JSON. At that step the process waits for its own
# local save of the step and the last persistent save to be committed, then SIGKILLs itself (a
# crash: nothing is cleaned up).
CHILD = textwrap.dedent(f"""
    import json, logging, os, signal, sys, time
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    address, pid, count, workdir, local_dir, kill_at, overrides = (
        sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
        int(sys.argv[6]), json.loads(sys.argv[7]))
    if address:
      from reasonir_jax.training import distributed
      distributed.initialize(address, count, pid)
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    committed = [os.path.join(local_dir, f"process_{{pid}}-of-{{count}}", str(kill_at))]
    if kill_at >= {EVERY}:
      committed.append(os.path.join(workdir, "checkpoints", str(kill_at // {EVERY} * {EVERY})))
    def callback(step, state, metrics):
      if step == kill_at:
        deadline = time.monotonic() + 300
        while not all(map(os.path.isdir, committed)) and time.monotonic() < deadline:
          time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
    overrides += [f"checkpoint.local_dir={{local_dir}}", "checkpoint.local_every_steps=1"]
    train.run(load_config("tiny", overrides), workdir, step_callback=callback)
    """)


def _start(tmp_path, env, workdir, local_dir, kill_at, overrides, processes):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  address = f"127.0.0.1:{free_port()}" if processes > 1 else ""
  if processes > 1:
    env = two_process_env(env)
  return [subprocess.Popen([sys.executable, str(script), address, str(pid), str(processes),
                            str(workdir), str(local_dir), str(kill_at), json.dumps(overrides)],
                           env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
          for pid in range(processes)]


def _wait(procs, code):
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == code, log[-4000:]
  return logs


def _params(workdir):
  from reasonir_jax.training import checkpoint as ckpt_lib
  params, _, _ = ckpt_lib.load_params_for_export(str(workdir))
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _assert_same_params(got_dir, want_dir):
  got, want = _params(got_dir), _params(want_dir)
  assert len(want) > 5 and all(np.isfinite(v).all() for v in want.values())
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _persistent_steps(workdir):
  from reasonir_jax.training import checkpoint as ckpt_lib
  manager = ckpt_lib.CheckpointManager(str(workdir))
  try:
    return manager.all_steps()
  finally:
    manager.close()


@pytest.mark.multiprocess
def test_sigkill_resumes_from_the_newer_local_step_and_ends_bitwise_equal(tmp_path, make_child_env):
  from reasonir_jax import train
  from reasonir_jax.configs import load_config

  env = make_child_env()
  workdir, local_dir = tmp_path / "killed", tmp_path / "local"
  procs = _start(tmp_path, env, workdir, local_dir, 6, RUN, 1)
  straight = tmp_path / "straight"
  train.run(load_config("tiny", RUN), str(straight))  # while the child runs
  _wait(procs, -signal.SIGKILL)
  assert _persistent_steps(workdir) == [4]  # the local step 6 is newer
  logs = _wait(_start(tmp_path, env, workdir, local_dir, -1, RUN, 1), 0)
  assert "resumed from the local checkpoint" in logs[0] and "at step 6" in logs[0], logs[0][-3000:]
  assert "training 8 steps from step 6" in logs[0]
  _assert_same_params(workdir, straight)


@pytest.mark.multiprocess
def test_two_processes_use_the_local_tier_and_fall_back_when_a_host_lost_it(
    tmp_path, make_child_env):
  overrides = RUN
  env = make_child_env()
  straight = uninterrupted_two_process_run(env, TWO_PROCESS_RUN)
  workdir, local_dir = tmp_path / "killed", tmp_path / "local"
  # A crash at step 3, before any persistent checkpoint: both processes resume from local step 3.
  _wait(_start(tmp_path, env, workdir, local_dir, 3, overrides, 2), -signal.SIGKILL)
  assert _persistent_steps(workdir) == []
  logs = _wait(_start(tmp_path, env, workdir, local_dir, 6, overrides, 2), -signal.SIGKILL)
  assert all("resumed from the local checkpoint" in log and "at step 3" in log for log in logs), \
      logs[0][-3000:]
  # Crashed again at step 6 (persistent step 4); process 1's host is replaced: its disk is empty.
  assert _persistent_steps(workdir) == [4]
  assert (local_dir / "process_0-of-2" / "6").is_dir()
  shutil.rmtree(local_dir / "process_1-of-2")
  logs = _wait(_start(tmp_path, env, workdir, local_dir, -1, overrides, 2), 0)
  for log in logs:
    assert "resumed from the local checkpoint" not in log and "at step 4" in log, log[-3000:]
  _assert_same_params(workdir, straight)


def test_partial_foreign_and_older_local_steps_are_never_read(tmp_path, make_tiny_config,
                                                              monkeypatch):
  from reasonir_jax import sharding as shd
  from reasonir_jax.training import local_checkpoint as lc
  from reasonir_jax.training.step import build_trainer

  cfg = make_tiny_config("mesh.shape=(2,2,2)", f"checkpoint.local_dir={tmp_path / 'local'}",
                         "checkpoint.local_every_steps=1", "checkpoint.local_keep=2")
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  state, abstract = trainer.init_state(0), trainer.abstract_state()
  tier = lc.LocalCheckpointTier(str(tmp_path / "work"), cfg.checkpoint)
  tier.save(state, {"position": 7}, 2)
  tier.wait()
  # The data state is written by Grain's checkpoint handler, as in the persistent `data` item.
  item = tmp_path / "local" / "process_0-of-1" / "2" / "data" / "process_0-of-1.json"
  assert json.loads(item.read_text()) == {"position": 7}
  restored, data_state, step = tier.restore(abstract, None)
  assert step == 2 and data_state == {"position": 7}
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored),
                               jax.tree.leaves(state)):
    name = jax.tree_util.keystr(path)
    assert got.sharding == want.sharding, name
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)

  # A write cut short (the disk fails mid-way): its folder keeps the .partial suffix.
  def failing_fsync(fd):
    raise OSError("disk gone")
  with monkeypatch.context() as patch:
    patch.setattr(os, "fsync", failing_fsync)
    tier.save(state, {"position": 8}, 3)
    with pytest.raises(OSError, match="local checkpoint write .* failed: disk gone"):
      tier.wait()
  assert (tmp_path / "local" / "process_0-of-1" / "3.partial").is_dir()
  assert tier.agreed_step(abstract) == 2
  # A committed-looking step whose bytes fall short of its manifest (a torn copy).
  torn = tmp_path / "local" / "process_0-of-1" / "4"
  shutil.copytree(torn.parent / "2", torn)
  manifest = json.loads((torn / "manifest.json").read_text())
  (torn / "manifest.json").write_text(json.dumps({**manifest, "step": 4}))
  with open(torn / "shards.bin", "r+b") as f:
    f.truncate(manifest["bytes"] - 1)
  assert tier.agreed_step(abstract) == 2
  # A new tier (the restart) removes the partial folder and still picks step 2.
  tier = lc.LocalCheckpointTier(str(tmp_path / "work"), cfg.checkpoint)
  assert not (tmp_path / "local" / "process_0-of-1" / "3.partial").exists()
  assert tier.restore(abstract, None)[2] == 2
  # Older than the persistent checkpoint, or written for another workdir: not used.
  assert tier.restore(abstract, 3) is None
  other = lc.LocalCheckpointTier(str(tmp_path / "other_work"), cfg.checkpoint)
  assert other.agreed_step(abstract) is None


def test_bad_local_tier_settings_name_the_flag(tmp_path, make_tiny_config):
  from reasonir_jax.training import local_checkpoint as lc
  cfg = make_tiny_config(f"checkpoint.local_dir={tmp_path}")
  with pytest.raises(ValueError, match="local_every_steps nor checkpoint.local_every_seconds"):
    lc.LocalCheckpointTier.from_config(str(tmp_path), cfg.checkpoint)
  cfg = make_tiny_config("checkpoint.local_dir=gs://bucket/local", "checkpoint.local_every_steps=5")
  with pytest.raises(ValueError, match="checkpoint.local_dir='gs://bucket/local' must be a disk"):
    lc.LocalCheckpointTier.from_config(str(tmp_path), cfg.checkpoint)
  assert lc.LocalCheckpointTier.from_config(str(tmp_path), make_tiny_config().checkpoint) is None


def test_the_time_cadence_counts_from_the_last_save_of_either_tier(tmp_path, monkeypatch):
  from reasonir_jax.configs import load_config
  from reasonir_jax.training import local_checkpoint as lc
  now = [1000.0]
  monkeypatch.setattr(lc.time, "monotonic", lambda: now[0])
  recipe = load_config("llama3_8b").checkpoint
  assert recipe.local_dir and 0 < recipe.local_every_seconds < recipe.every_seconds
  cfg = recipe.copy_and_resolve_references()
  cfg.local_dir = str(tmp_path)
  tier = lc.LocalCheckpointTier.from_config(str(tmp_path / "work"), cfg)
  now[0] += cfg.local_every_seconds - 1
  assert not tier.due(7)
  now[0] += 2
  assert tier.due(7)
  tier.restart_clock()  # a persistent save started
  assert not tier.due(8)
  now[0] += cfg.local_every_seconds
  assert tier.due(9)
