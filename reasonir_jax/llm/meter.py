"""`InFlightMeter`: how many requests a streaming backend has in flight, and their time-weighted
mean (for benchmarks and logs)."""
from __future__ import annotations

import threading
import time


class InFlightMeter:
  """Counts requests in flight and their time-weighted mean depth (for benchmarks and logs)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.current = 0
    self.peak = 0
    self.completed = 0
    self._area = 0.0
    self._last = self._start = time.monotonic()

  def _advance(self) -> None:
    now = time.monotonic()
    self._area += self.current * (now - self._last)
    self._last = now

  def enter(self) -> None:
    with self._lock:
      self._advance()
      self.current += 1
      self.peak = max(self.peak, self.current)

  def exit(self) -> None:
    with self._lock:
      self._advance()
      self.current -= 1
      self.completed += 1

  def reset(self) -> None:
    with self._lock:
      self._area, self.peak, self.completed = 0.0, self.current, 0
      self._last = self._start = time.monotonic()

  def summary(self) -> dict:
    with self._lock:
      self._advance()
      elapsed = max(1e-9, self._last - self._start)
      return {"mean_in_flight": self._area / elapsed, "peak_in_flight": self.peak,
              "completed": self.completed, "elapsed_s": elapsed,
              "requests_per_s": self.completed / elapsed}
