"""Timing shared by the benchmarks that race us against a reference in the same run."""
from __future__ import annotations

import time
from typing import Callable


def interleaved_seconds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
  """Seconds of each call per round, the functions alternating within every round so that a
  machine whose speed drifts (shared or throttled cores) slows them alike. Warm up first."""
  seconds = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      seconds[name].append(time.perf_counter() - t0)
  return seconds
