"""Multi-process start-up: `jax.distributed.initialize()` when launched as several processes.

Explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) win. `--multihost` (or
REASONIR_MULTIHOST=1) asks JAX to find its peers itself, which on a Cloud TPU VM it does from the
metadata server: `launch/tpu.sh` passes it, since an ssh shell on a TPU worker need not carry any
environment variable that names the other hosts. JAX_COORDINATOR_ADDRESS or a multi-host TPU
environment also start it; a single process on one host starts nothing.

`jax.distributed.initialize` also starts JAX's preemption service: it catches the SIGTERM a
preempted TPU host receives and lets every process agree on one step at which to checkpoint
and stop (training/preemption.py).
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def _multi_host_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, multihost: bool = False) -> bool:
  """Initialises jax.distributed when needed; returns True when it did."""
  explicit = coordinator_address or (num_processes is not None and num_processes > 1)
  if explicit:
    if not coordinator_address or num_processes is None or process_id is None:
      raise ValueError("multi-process launch needs all of --coordinator_address, --num_processes "
                       f"and --process_id (got {coordinator_address!r}, {num_processes}, {process_id})")
    if num_processes > 1:
      # CPU processes exchange collectives through gloo; accelerators ignore this option.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif (multihost or os.environ.get("REASONIR_MULTIHOST") == "1"
        or os.environ.get("JAX_COORDINATOR_ADDRESS") or _multi_host_tpu()):
    jax.distributed.initialize()
  else:
    return False
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
