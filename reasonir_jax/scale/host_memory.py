"""Host malloc policy for processes whose XLA computations run on the CPU.

XLA:CPU mallocs each execution's scratch buffer (68 MiB for the tiny train step at batch 16) and
frees it when the step ends. glibc hands out blocks that large as fresh mmaps (a worker thread's
arena cannot hold them), so every step faults in every 4 KiB page again: ~17k page faults, about a
quarter of the step on a 2-core machine. PyTorch's smaller per-tensor blocks come from the heap and
are reused. `keep_freed_blocks` makes glibc serve large blocks from the heap too and keep freed ones
for the next step (what tcmalloc or jemalloc would do), so the steady state faults no pages.

The arena limit only reaches threads created after it, so call this before JAX starts its CPU
client (before the first `jax.devices()` or computation).
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = (
    (_M_ARENA_MAX, 1),  # every thread allocates from the main (sbrk) heap, which has no size cap
    (_M_MMAP_MAX, 0),  # no block is served by its own mmap, to be unmapped on free
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # freed memory at the heap top stays mapped
)


def keep_freed_blocks() -> bool:
  """Applies the policy above; False where the C library is not glibc (nothing changes)."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def cpu_only_process() -> bool:
  """True when JAX is restricted to its CPU backend (JAX_PLATFORMS=cpu)."""
  return os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"


def configure_for_cpu() -> bool:
  """`keep_freed_blocks()` if this process computes on the CPU only; returns whether it applied."""
  if not cpu_only_process():
    return False
  applied = keep_freed_blocks()
  if applied:
    log.info("CPU run: glibc keeps freed blocks for reuse (no per-step page faults)")
  return applied
