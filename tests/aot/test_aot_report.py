"""The AOT fit report: argument errors, memory accounting helpers, and (with libtpu) a real
compile of the tiny config's train step for a v5p-8 topology, which fits, and for a v5e-1 with a
batch far too big, which does not.

The TPU compiles run in other processes: this process already initialised JAX's CPU backend with
8 fake devices, and a fresh process gives libtpu its own environment (same result, less
coupling). They are forked from one driver (tests/aot/aot_driver.py) that imports jax and the
model once, most of a process's start-up.
"""
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile

import pytest

from reasonir_jax.scale import aot


def jax_version():
  import jax
  return jax.__version__

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]'); TPU AOT compile skipped")

# configs/tiny.py parameter count: embedding 2048x64, 2 layers of q/k/v/o + 3 MLP matrices
# + 2 norms, final norm.
TINY_PARAMS = 2048 * 64 + 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


@pytest.mark.parametrize("argv,message", [
    (["--config=tiny", "--topology=v5p-7"], "unknown TPU topology 'v5p-7'"),
    (["--config=tiny", "--topology=v5p-8", "--config.train.nope=1"], "unknown config key 'train.nope'"),
    (["--config=tiny", "--topology=v5p-8", "--config.train.global_batch_size=x"],
     "config key 'train.global_batch_size'"),
    (["--config=no/such/config.py", "--topology=v5p-8"], "config file not found"),
    (["--config=tiny", "--topology=v5p-8", "--query_len=-4"], "--query_len must be positive"),
    (["--config=tiny", "--topology=v5p-8", "--num_slices=0"], "--num_slices must be >= 1"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
  assert aot.main(argv) == aot.EXIT_BAD_ARGS
  assert message in capsys.readouterr().err


def test_unknown_flag_and_missing_topology_exit_2():
  for argv in (["--config=tiny", "--topology=v5p-8", "--colour=red"], ["--config=tiny"]):
    with pytest.raises(SystemExit) as e:
      aot.main(argv)
    assert e.value.code == aot.EXIT_BAD_ARGS


def test_parse_oom_reads_both_compiler_messages():
  total = "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory " \
          "space hbm. Used 17.50G of 15.75G hbm. Exceeded hbm capacity by 1.75G."
  temp = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO " \
         "temporaries (198.26G) exceeds available HBM (95.74G)."
  assert aot.parse_oom(total) == ("total", int(17.5 * 2**30), int(15.75 * 2**30))
  assert aot.parse_oom(temp) == ("temp", int(198.26 * 2**30), int(95.74 * 2**30))
  assert aot.parse_oom("INTERNAL: something else") is None


def test_host_memory_counts_towards_fit_and_the_hint_names_the_remat_that_helps():
  import ml_collections
  from reasonir_jax.scale import tpu_topologies
  v5p, v6e = tpu_topologies.get_slice("v5p-64"), tpu_topologies.get_slice("v6e-256")
  limit = v5p.chip.host_bytes_per_chip
  assert limit == 112 * 10**9  # 448 GB per 4-chip v5p VM
  assert aot.host_fits({"host_temp": limit}, v5p)
  assert not aot.host_fits({"host_temp": limit + 1}, v5p)
  assert aot.host_fits({"host_temp": 10**15}, v6e)  # host RAM not known: not checked
  cfg = ml_collections.ConfigDict({"model": {"remat_policy": "offload"},
                                   "train": {"grad_cache_chunk": 0}})
  hint = aot._hint(cfg, v5p, {"fsdp": 32}, {"host_temp": 128 * 2**30})
  assert "host memory is short" in hint and "remat_policy=full" in hint
  assert "grad_cache_chunk=32" in hint and "--topology=v5p-128" in hint
  cfg.model.remat_policy = "full"
  assert "remat_policy=offload" in aot._hint(cfg, v5p, {"fsdp": 32}, {})
  cfg.model.remat_policy = "offload"
  assert "remat_policy" not in aot._hint(cfg, v5p, {"fsdp": 32}, {"host_temp": 1})


def test_per_device_bytes_follow_the_sharding():
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(jax.devices()[:8], ("fsdp",))
  sharded = jax.ShapeDtypeStruct((64, 10), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
  replicated = jax.ShapeDtypeStruct((5,), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  assert aot.per_device_bytes(sharded) == 8 * 10 * 4
  assert aot.per_device_bytes(replicated) == 10
  state = {"params": [sharded], "opt_state": (sharded, sharded), "step": replicated}
  assert aot.split_state_bytes(state) == {"params": 320, "opt_state": 640, "other_state": 10}


class AotDriver:
  """Runs `python -m reasonir_jax.scale.aot --config=tiny ARGS` in a process forked from one
  driver; `run` gives what a separate process would have: the CompletedProcess (returncode,
  stdout, stderr)."""

  def __init__(self):
    self._proc = self._log = None

  def _start(self):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the fake CPU devices are not needed there
    # The reports measure the TPU compiler: no compilation cache between it and them.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    self._log = tempfile.TemporaryFile()  # what the driver prints between requests
    self._proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "aot", "aot_driver.py")], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        start_new_session=True)  # its own process group: a timeout ends its child too

  def run(self, args, timeout):
    argv = ["--config=tiny", *args]
    if self._proc is None or self._proc.poll() is not None:
      self.close()
      self._start()
    self._proc.stdin.write(json.dumps(argv) + "\n")
    self._proc.stdin.flush()
    ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
    line = self._proc.stdout.readline() if ready else ""
    if not line:
      os.killpg(self._proc.pid, signal.SIGKILL)
      self._log.seek(0)
      log = self._log.read().decode(errors="replace")[-3000:]
      self.close()
      pytest.fail(f"the AOT driver {'died' if ready else 'timed out'} on {argv}; its "
                  f"stderr:\n{log}")
    answer = json.loads(line)
    return subprocess.CompletedProcess(["aot", *argv], answer["returncode"], answer["stdout"],
                                       answer["stderr"])

  def close(self):
    if self._proc is not None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
      self._proc.stdout.close()
      self._log.close()
    self._proc = self._log = None


@pytest.fixture(scope="module")
def aot_driver():
  """The module's AOT driver, started on first use (never when libtpu is missing)."""
  driver = AotDriver()
  yield driver
  driver.close()


def _run_aot(driver, *args, timeout=600):
  proc = driver.run(args, timeout)
  lines = proc.stdout.strip().splitlines()
  assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
  try:
    report = json.loads(lines[-1])
  except json.JSONDecodeError:
    pytest.fail(f"last line is not JSON: {lines[-1]!r}\nstderr:\n{proc.stderr[-3000:]}")
  return proc, report


@pytest.mark.tpu
@needs_libtpu
@pytest.mark.slow
def test_tiny_step_with_fsdp_and_grad_cache_compiles_and_fits_on_v5p_8(aot_driver):
  from reasonir_jax.training import flops
  proc, r = _run_aot(aot_driver, "--topology=v5p-8", "--query_len=32", "--passage_len=64",
                     "--config.mesh.shape=(1,-1,1)", "--config.train.grad_cache_chunk=8")
  assert proc.returncode == aot.EXIT_FITS, proc.stderr[-3000:]
  assert set(r) >= {"topology", "chips", "per_chip_bytes", "hbm_bytes", "fits", "flops_per_step",
                    "tokens_per_step"}
  assert (r["topology"], r["chips"], r["fits"]) == ("v5p-8", 4, True)
  assert r["hbm_bytes"] == 95 * 2**30
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}  # from the override
  mem = r["memory"]
  # fp32 weight matrices are split 4 ways over fsdp; the tiny norm scales may stay replicated.
  norms = 2 * 2 * 64 + 64
  assert 4 * TINY_PARAMS // 4 <= mem["params"] <= 4 * (TINY_PARAMS - norms) // 4 + 4 * norms
  assert 2 * mem["params"] <= mem["opt_state"] <= 2 * mem["params"] + 64  # Adam mu, nu, counters
  assert mem["activations_temp"] > 0
  assert r["per_chip_bytes"] >= mem["params"] + mem["opt_state"] + mem["activations_temp"]
  model_cfg = aot.load_config("tiny").model
  # MFU's model FLOPs leave GradCache's extra forward pass out; the hardware count has it.
  assert r["flops_per_step"] == flops.train_step_flops(model_cfg, 16, 32, 64, 2)
  assert r["hardware_flops_per_step"] == flops.hardware_step_flops(model_cfg, 16, 32, 64, 2,
                                                                   grad_cache_chunk=8,
                                                                   attention="splash")
  assert r["attention"] == "splash"  # auto, on a TPU topology
  assert r["kernel_calls"] > 0  # the splash kernel really is in the program
  assert r["jax"] == jax_version() and r["libtpu"] and r["git_commit"]
  assert r["tokens_per_step"] == 16 * 32 + 32 * 64
  assert "Per-chip memory on v5p-8" in proc.stdout


@pytest.mark.tpu
@needs_libtpu
@pytest.mark.slow
def test_xla_attention_compiles_without_kernels_and_needs_more_memory(aot_driver):
  """The kernel path against the XLA one on the same step: splash keeps no [b, k, x, s] score
  tensors, so its temporaries are smaller (queries and passages of 256 tokens: 53 against
  62 MB measured)."""
  args = ("--topology=v5p-8", "--query_len=256", "--passage_len=256", "--config.model.head_dim=128")
  proc, xla = _run_aot(aot_driver, *args, "--config.model.attention=xla")
  assert proc.returncode == aot.EXIT_FITS, proc.stderr[-3000:]
  proc, splash = _run_aot(aot_driver, *args)
  assert proc.returncode == aot.EXIT_FITS, proc.stderr[-3000:]
  assert (xla["attention"], xla["kernel_calls"]) == ("xla", 0)
  assert splash["attention"] == "splash" and splash["kernel_calls"] > 0
  assert splash["memory"]["activations_temp"] < xla["memory"]["activations_temp"]


@pytest.mark.tpu
@needs_libtpu
@pytest.mark.slow
def test_offload_remat_moves_the_layer_inputs_off_the_chip(aot_driver):
  """remat_policy=offload keeps each layer's input in host memory: 16 layers x 6,144 tokens per
  chip x 64 x fp32 = 24 MiB of them: most of that leaves the temporaries (22.6 MiB measured)."""
  args = ("--topology=v5p-8", "--query_len=128", "--passage_len=128",
          "--config.train.global_batch_size=64", "--config.model.num_layers=16",
          "--config.model.scan_layers=True")
  temps = {}
  for policy in ("full", "offload"):
    proc, r = _run_aot(aot_driver, *args, f"--config.model.remat_policy={policy}")
    assert proc.returncode == aot.EXIT_FITS, proc.stderr[-3000:]
    temps[policy] = r["memory"]["activations_temp"]
  assert temps["full"] - temps["offload"] >= 0.75 * 16 * 6144 * 64 * 4


@pytest.mark.tpu
@needs_libtpu
def test_too_big_a_batch_does_not_fit_and_exits_3_with_a_hint(aot_driver):
  proc, r = _run_aot(aot_driver, "--topology=v5e-1", "--config.train.global_batch_size=2048",
                     "--query_len=2048", "--passage_len=2048")
  assert proc.returncode == aot.EXIT_DOES_NOT_FIT, proc.stderr[-3000:]
  assert r["fits"] is False and r["chips"] == 1
  assert r["per_chip_bytes"] > r["hbm_bytes"]
  assert "grad_cache_chunk" in proc.stdout and "--topology=v5e-4" in proc.stdout


@pytest.mark.tpu
@needs_libtpu
def test_two_slices_put_the_data_axis_across_them(aot_driver):
  proc, r = _run_aot(aot_driver, "--topology=v5p-8", "--num_slices=2", "--query_len=16",
                     "--passage_len=16")
  assert proc.returncode == aot.EXIT_FITS, proc.stderr[-3000:]
  assert (r["topology"], r["chips"]) == ("2xv5p-8", 8)
  assert r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.tpu
@needs_libtpu
def test_a_batch_the_mesh_cannot_split_exits_2(aot_driver):
  proc = aot_driver.run(["--topology=v5p-8", "--config.train.global_batch_size=6"], timeout=300)
  assert proc.returncode == aot.EXIT_BAD_ARGS
  assert "global_batch_size=6 must be a multiple" in proc.stderr
