"""Two processes with 4 CPU devices each (gloo collectives) give the same loss and gradients as
one process with 8 devices on the same global batch; each process supplies only its own rows."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)  # multihost_util, for this process and (via PYTHONPATH) the children
from multihost_util import free_port, two_process_env  # noqa: E402  pylint: disable=wrong-import-position

OVERRIDES = ["model.num_layers=1", "model.vocab_size=256", "model.hidden_size=32",
             "model.intermediate_size=64", "model.head_dim=8", "mesh.shape=(2,4,1)"]

# Shared by the child processes and the single-process reference in this file.
COMMON = textwrap.dedent("""
    import numpy as np, jax
    from flax import nnx
    from reasonir_jax import sharding as shd
    from reasonir_jax.configs import load_config
    from reasonir_jax.model import LlamaEncoder, ModelConfig
    from reasonir_jax.training.step import build_trainer
    from multihost_util import global_batch, local_rows

    def loss_and_grads(overrides):
      cfg = load_config("tiny", overrides)
      trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
      host = nnx.split(LlamaEncoder(ModelConfig.from_config(cfg.model), rngs=nnx.Rngs(0)), nnx.Param)[1]
      params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: np.asarray(x)[i]),
                            host, trainer.param_shardings)
      sh = trainer.batch_sharding
      batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sh, local_rows(sh, x), x.shape),
                           global_batch(256))
      (loss, metrics), grads = jax.jit(trainer.loss_and_grads)(params, batch)
      from jax.experimental import multihost_utils
      grads = multihost_utils.process_allgather(grads, tiled=True)
      return float(loss), {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    """)

CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    from reasonir_jax.training import distributed
    address, pid, out, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    distributed.initialize(address, 2, pid)
    import jax
    assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8
    """) + COMMON + textwrap.dedent("""
    loss, grads = loss_and_grads(overrides)
    if pid == 0:
      np.savez(out, loss=loss, **grads)
    """)


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  out = tmp_path / "two_process.npz"
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]))
  env = two_process_env(env)
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, str(script), address, str(pid), str(out),
                             json.dumps(OVERRIDES)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
  namespace = {}
  exec(COMMON, namespace)  # the single-process, 8-device reference, while the children run
  ref_loss, ref_grads = namespace["loss_and_grads"](OVERRIDES)
  for p in procs:
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-4000:]
  got = np.load(out)
  np.testing.assert_allclose(float(got["loss"]), ref_loss, rtol=1e-5)
  assert len(ref_grads) > 5
  for name, want in ref_grads.items():
    np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()),
                               err_msg=name)
