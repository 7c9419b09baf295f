"""Streams a pod worker's output into the run's workdir while it is written.

A preempted spot VM takes its disk with it: a log copied off the VM every few minutes loses the
last minutes and the traceback. `launch/worker.sh` pipes the trainer's output through

    python -m reasonir_jax.training.log_stream DEST [--every SECONDS]

which copies its input to its output unchanged (the worker's local log) and, every SECONDS (5)
when new output has come and once more at the end of input, writes the new bytes as the next
object `DEST/part-NNNNNN.log`. Objects on a store like GCS cannot be appended to, so each
interval is an object of its own; `--cat DEST` prints a log back in order.

Storage never holds the trainer up: input is read and passed on at once, uploads run on their
own thread, and a failed upload keeps its bytes for the next try. The process ignores SIGTERM
and SIGINT (a preemption sends them to every process): it ends when the trainer's output does,
after the last part is written.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading

from reasonir_jax import paths

_PART = re.compile(r"^part-(\d{6,})\.log$")
READ_BYTES = 1 << 16


def part_names(dest: str) -> list[str]:
  """The parts under `dest`, in the order they were written."""
  if not paths.isdir(dest):
    return []
  names = [n for n in paths.listdir(dest) if _PART.match(n)]
  return sorted(names, key=lambda n: int(_PART.match(n).group(1)))


class LogStream:
  """Collects bytes and writes them to `dest` as numbered parts (`flush`, or `run` on a thread)."""

  def __init__(self, dest: str, every: float = 5.0, err=None):
    self.dest = dest
    self.every = every
    self.err = err or sys.stderr
    self._pending = bytearray()
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._failing = False
    paths.makedirs(dest)
    # A restarted streamer (same attempt) goes on after the parts already there.
    existing = part_names(dest)
    self.next_part = int(_PART.match(existing[-1]).group(1)) + 1 if existing else 0

  def add(self, data: bytes) -> None:
    with self._lock:
      self._pending += data

  def flush(self) -> bool:
    """Writes what has come since the last part; False (bytes kept) if the store refused."""
    with self._lock:
      data = bytes(self._pending)
      self._pending.clear()
    if not data:
      return True
    name = paths.join(self.dest, f"part-{self.next_part:06d}.log")
    try:
      with paths.open(name, "wb") as f:
        f.write(data)
    except Exception as e:  # noqa: BLE001 - any store error: keep the bytes, try again later
      with self._lock:
        self._pending[:0] = data
      if not self._failing:
        print(f"log_stream: cannot write {name}: {type(e).__name__}: {e}; retrying",
              file=self.err, flush=True)
      self._failing = True
      return False
    self._failing = False
    self.next_part += 1
    return True

  def run(self) -> None:
    """The upload loop: a part every `every` seconds until `close`, then a last one."""
    while not self._done.wait(self.every):
      self.flush()
    self.flush()

  def close(self) -> None:
    self._done.set()


def stream(dest: str, src, out, every: float = 5.0, final_wait: float = 20.0) -> None:
  """Copies `src` to `out` (binary files) and streams it to `dest` until `src` ends."""
  logs = LogStream(dest, every)
  uploader = threading.Thread(target=logs.run, name="log-stream", daemon=True)
  uploader.start()
  fd = src.fileno()
  while True:
    data = os.read(fd, READ_BYTES)
    if not data:
      break
    out.write(data)
    out.flush()
    logs.add(data)
  logs.close()
  # A preempted VM has seconds left: bounded, so a dead store cannot keep the worker waiting.
  uploader.join(final_wait)


def cat(dest: str, out) -> None:
  for name in part_names(dest):
    with paths.open(paths.join(dest, name), "rb") as f:
      out.write(f.read())
  out.flush()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("dest", help="folder for the parts (local or gs://...)")
  parser.add_argument("--every", type=float, default=5.0, help="seconds between parts")
  parser.add_argument("--cat", action="store_true", help="print the log under DEST and exit")
  args = parser.parse_args(argv)
  if args.every <= 0:
    parser.error(f"--every must be > 0 seconds, got {args.every}")
  if args.cat:
    cat(args.dest, sys.stdout.buffer)
    return
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)
  stream(args.dest, sys.stdin.buffer, sys.stdout.buffer, args.every)


if __name__ == "__main__":
  main()
