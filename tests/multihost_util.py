"""Shared by tests that start 2 real jax.distributed processes: a random global batch, the rows
of it one process supplies, a free coordinator port, and the uninterrupted 2-process training run
that several resume tests compare against (run once per pytest run). Child processes import
it too (the spawning test puts tests/ on their PYTHONPATH)."""
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def global_batch(vocab: int, b: int = 16, g: int = 2, lq: int = 8, lp: int = 12, seed: int = 3):
  """B queries of lq tokens and B*g passages of lp tokens, with ragged right padding."""
  rng = np.random.default_rng(seed)

  def side(rows, length):
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    mask = np.arange(length)[None] < rng.integers(length // 2, length + 1, size=rows)[:, None]
    return {"input_ids": ids, "attention_mask": mask.astype(np.int32),
            "pool_mask": mask.astype(np.int32)}

  return {"query": side(b, lq), "passage": side(b * g, lp)}


def local_rows(sharding, x):
  """This process's rows of global `x`, in order: the distinct row blocks its devices hold."""
  blocks = sorted({(i[0].start or 0, i[0].stop or x.shape[0])
                   for i in sharding.addressable_devices_indices_map(x.shape).values()})
  return np.concatenate([x[a:b] for a, b in blocks])


def two_process_env(env) -> dict:
  """`env` for one process of a 2-process run: the test run's XLA flags, with 4 fake CPU devices
  (each process's share of the 8-device mesh) instead of the parent's 8."""
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return {**env, "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=4"])}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The 2-process `train.run` of the resume tests (test_training_multihost_resume.py and the local
# checkpoint tier's): one bucket length (one compilation per run), the sample tokenizer's
# vocabulary (2048: a smaller embedding would turn its ids into NaNs). Adam turns float noise in
# a near-zero gradient into an update of up to lr: a small lr keeps the 1- vs 2-process difference
# under rtol 1e-5 (other data would still move most parameters by ~lr, far beyond it). Tests add
# their checkpoint settings, which leave the parameters unchanged.
TWO_PROCESS_RUN = ["model.num_layers=1", "model.vocab_size=2048", "model.hidden_size=32",
                   "model.intermediate_size=64", "model.head_dim=8", "mesh.shape=(4,2,1)",
                   "train.num_steps=8", "train.log_every=1", "data.max_length=48",
                   "data.query_max_length=48", "data.passage_max_length=48",
                   "data.bucket_lengths=(48,)", "data.prefetch=0", "optim.lr=1e-5"]

# argv: coordinator address, process id, workdir, overrides as JSON.
TRAIN_CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    distributed.initialize(address, 2, pid)
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    train.run(load_config("tiny", overrides), workdir)
    """)

def uninterrupted_two_process_run(env, overrides) -> str:
  """The workdir of a 2-process `train.run` of `overrides` that never stopped: trained the first
  time a test of this pytest run asks for these overrides, shared after, also across
  pytest-xdist workers (a read-only reference for the tests that resume 2-process runs). A lock
  file makes a second asker wait for the run rather than train it again."""
  key = json.dumps(overrides)
  root = os.path.join(os.environ["REASONIR_JAX_TEST_RUN_DIR"], "uninterrupted_two_process",
                      hashlib.sha1(key.encode()).hexdigest()[:16])
  os.makedirs(root, exist_ok=True)
  workdir, done = os.path.join(root, "run"), os.path.join(root, "done")
  with open(os.path.join(root, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(done):
      shutil.rmtree(workdir, ignore_errors=True)  # an asker that failed part-way
      script = os.path.join(root, "child.py")
      with open(script, "w") as f:
        f.write(TRAIN_CHILD)
      env = two_process_env(env)
      address = f"127.0.0.1:{free_port()}"
      procs = [subprocess.Popen([sys.executable, script, address, str(pid), workdir, key],
                                env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for pid in (0, 1)]
      for p in procs:
        log = p.communicate(timeout=900)[0]
        assert p.returncode == 0, log[-4000:]
      open(done, "w").close()
  return workdir
