"""bench/gpu_train_step.py at its CPU size: it runs end to end, both sides start from the same
weights (same first-step loss) and MFU is printed from the model FLOPs."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_bench_runs_tiny_on_cpu():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "gpu_train_step.py"), "--tiny", "--batch=2",
       "--layers=2", "--rounds=1", "--steps=1", "--peak_flops=1e9"],
      capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  losses = re.search(r"first-step loss: jax ([\d.]+)  torch ([\d.]+)", out)
  assert losses, out
  assert abs(float(losses.group(1)) - float(losses.group(2))) < 1e-4
  mfu = re.findall(r"^(jax|torch) .* MFU ([\d.]+)%", out, re.M)
  assert [name for name, _ in mfu] == ["jax", "torch"] and all(float(v) > 0 for _, v in mfu)
  assert re.search(r"ratio \(jax / torch speed\): [\d.]+x", out)
