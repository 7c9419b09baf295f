"""Stopping cleanly when the machine is about to go away (spot / preemptible TPU slices).

A preempted run saves a checkpoint at the step it has reached, waits until that checkpoint is
committed, and exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL) so the launcher knows to restart
it rather than report a failure; the restarted run resumes from that step. A spot VM is gone
about 30 s after its notice (`checkpoint.preemption_grace_seconds`): when the save would not
commit within what is left of that window, the run exits at once instead, and the newest
complete checkpoint is where the restart resumes (`CheckpointManager.preemption_plan`).

Two signals ask for it:
- SIGTERM (or SIGINT) to a single-process run: a handler sets a flag that the loop reads after
  each step (nothing is saved from inside the handler).
- On several processes, every process must stop at the *same* step, or the collective save
  would hang. JAX's preemption service (started by jax.distributed) catches the SIGTERM that
  the TPU runtime sends each host and agrees on a sync step; Orbax's
  `CheckpointManager.reached_preemption(step)` reports it on every process at that step.
"""
from __future__ import annotations

import logging
import signal
import time

import jax

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75


class Preempted(SystemExit):
  """Raised by the trainer after the preemption checkpoint is committed (exit status 75), or,
  with `abandoned`, when it exits at once leaving a save in flight unfinished: the process
  must then end without waiting for it (`train.main` does)."""

  def __init__(self, step: int, abandoned: bool = False):
    super().__init__(EXIT_PREEMPTED)
    self.step = step
    self.abandoned = abandoned


class PreemptionWatch:
  """`stop(step)` is True once the run should checkpoint and exit. Use as a context manager:
  the single-process signal handlers are installed on entry and restored on exit."""

  def __init__(self, manager):
    self.manager = manager
    self.requested = False
    self.notice_time: float | None = None  # time.monotonic() of the notice, or a bound on it
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if not self.requested:
      self.notice_time = time.monotonic()
      log.warning("received %s: checkpointing after the current step if it fits the grace "
                  "window, then exiting with %d", signal.Signals(signum).name, EXIT_PREEMPTED)
    self.requested = True

  def __enter__(self):
    # With several processes JAX's preemption service owns SIGTERM (see module docstring).
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        try:
          self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals to the caller
          pass
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def stop(self, step: int, earliest_notice: float | None = None) -> bool:
    """Whether to stop after `step`. On several processes the notice time is not seen here
    (JAX's service holds the signal): `earliest_notice`, when the step before the agreed one
    started, bounds it."""
    if jax.process_count() > 1 and not self.requested:
      if self.manager.reached_preemption(step):
        self.requested = True
        self.notice_time = earliest_notice if earliest_notice is not None else time.monotonic()
    return self.requested
