"""glibc block reuse for CPU runs: a freed 64 MiB block comes back without page faults."""
import subprocess
import sys

import pytest

_PROBE = r"""
import ctypes, resource, sys, threading
from reasonir_jax.scale import host_memory
applied = host_memory.keep_freed_blocks() if sys.argv[1] == "reuse" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []

def cycle():  # on a new thread, like XLA:CPU's workers (their own malloc arena by default)
  for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

t = threading.Thread(target=cycle)
t.start()
t.join()
print(applied, *faults)
"""


def _faults(mode):
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True,
                       text=True).stdout.split()
  return out[0] == "True", [int(x) for x in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc policy")
def test_freed_blocks_are_reused_without_page_faults():
  pages = (64 << 20) // 4096
  applied, default = _faults("default")
  assert not applied
  assert min(default[1:]) > pages // 2, default  # every cycle maps fresh pages
  applied, reuse = _faults("reuse")
  assert applied
  assert max(reuse[1:]) < pages // 20, reuse  # later cycles reuse the same pages


def test_only_cpu_only_processes_are_configured(monkeypatch):
  from reasonir_jax.scale import host_memory
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not host_memory.cpu_only_process() and not host_memory.configure_for_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.cpu_only_process()
