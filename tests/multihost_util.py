"""Shared by tests that start 2 real jax.distributed processes: a random global batch, the rows
of it one process supplies, a free coordinator port, and the uninterrupted 2-process training run
that several resume tests compare against (run once per pytest session). Child processes import
it too (the spawning test puts tests/ on their PYTHONPATH)."""
import json
import os
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
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    distributed.initialize(address, 2, pid)
    from reasonir_jax import train
    from reasonir_jax.configs import load_config
    train.run(load_config("tiny", overrides), workdir)
    """)

_UNINTERRUPTED = {}


def uninterrupted_two_process_run(tmp_path_factory, env, overrides) -> str:
  """The workdir of a 2-process `train.run` of `overrides` that never stopped: trained the
  first time these overrides are asked for in this pytest session, shared after (a read-only
  reference for the tests that resume 2-process runs)."""
  key = json.dumps(overrides)
  if key not in _UNINTERRUPTED:
    workdir = tmp_path_factory.mktemp("uninterrupted_two_process")
    script = workdir / "child.py"
    script.write_text(TRAIN_CHILD)
    env = {k: v for k, v in env.items() if k != "XLA_FLAGS"}
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), address, str(pid),
                               str(workdir / "run"), key], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in (0, 1)]
    for p in procs:
      log = p.communicate(timeout=900)[0]
      assert p.returncode == 0, log[-4000:]
    _UNINTERRUPTED[key] = str(workdir / "run")
  return _UNINTERRUPTED[key]
