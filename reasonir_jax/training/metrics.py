"""Step metrics to stdout and TensorBoard event files, with throughput and MFU.

MFU divides the model's analytic FLOPs (`flops.py`: bidirectional attention within each text)
by the device's peak bf16 FLOP/s, looked up by `device_kind` or given as
`config.train.peak_flops_per_device`; HFU divides the FLOPs the step executes (plus GradCache's
extra forward pass and what the backward recomputes: remat, attention scores). Unknown devices
(CPU) get no MFU rather than a made-up one.
"""
from __future__ import annotations

import os
import time
from typing import Mapping

import jax

# The peak table lives with the FLOPs formulas; re-exported for callers of this module.
from reasonir_jax.training.flops import peak_flops_per_device  # noqa: F401


class Throughput:
  """Examples/s, tokens/s and MFU over the steps since the last `report`."""

  def __init__(self, num_devices: int, peak_flops: float | None):
    self.num_devices = num_devices
    self.peak_flops = peak_flops
    self._reset()

  def _reset(self):
    self._t0 = time.perf_counter()
    self._examples = self._tokens = 0
    self._flops = self._hardware_flops = 0.0
    self._steps = 0

  def add(self, examples: int, tokens: int, flops, hardware_flops=None) -> None:
    """`flops`: model FLOPs (MFU); `hardware_flops`: executed ones (HFU, when given). Either may
    be a device scalar (packed batches): it is read only in `report`, so no step waits on it."""
    self._examples += examples
    self._tokens += tokens
    self._flops += flops
    self._hardware_flops += flops if hardware_flops is None else hardware_flops
    self._steps += 1

  def report(self) -> dict[str, float]:
    dt = max(time.perf_counter() - self._t0, 1e-9)
    out = {"steps_per_s": self._steps / dt, "examples_per_s": self._examples / dt,
           "tokens_per_s": self._tokens / dt,
           "tokens_per_s_per_device": self._tokens / dt / self.num_devices}
    if self.peak_flops:
      flops, hardware_flops = float(self._flops), float(self._hardware_flops)
      out["mfu"] = flops / dt / (self.peak_flops * self.num_devices)
      if hardware_flops != flops:
        out["hfu"] = hardware_flops / dt / (self.peak_flops * self.num_devices)
    self._reset()
    return out


def format_line(step: int, scalars: Mapping[str, float]) -> str:
  parts = [f"step {step}"]
  for k, v in scalars.items():
    parts.append(f"{k}={v:.4g}" if abs(v) < 1e5 else f"{k}={v:.3e}")
  return " ".join(parts)


class MetricWriter:
  """Writes scalars to stdout and to TensorBoard event files under `workdir/tensorboard`
  (process 0 only, so multi-host runs print once)."""

  def __init__(self, workdir: str | None, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled and workdir:
      from tensorboardX import SummaryWriter
      from reasonir_jax import paths
      from reasonir_jax.training import tensorboard_remote
      logdir = paths.join(workdir, "tensorboard")
      tensorboard_remote.register(logdir)  # gs:// event files go through fsspec, in parts
      self._tb = SummaryWriter(logdir)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    print(format_line(step, scalars), flush=True)
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"train/{k}", v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
