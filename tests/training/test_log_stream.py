"""Worker logs leave the VM while they are written (reasonir_jax/training/log_stream.py)."""
import io
import os
import signal
import subprocess
import sys
import time

from reasonir_jax.training import log_stream

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(dest, every="0.1"):
  return subprocess.Popen([sys.executable, "-m", "reasonir_jax.training.log_stream", str(dest),
                           "--every", every], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          cwd=REPO)


def _wait_for(predicate, timeout=20.0):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_output_reaches_the_store_while_the_process_still_runs(tmp_path):
  dest = tmp_path / "logs" / "host-0" / "attempt-1"
  proc = _start(dest)
  proc.stdin.write(b"step 1 loss 3.5\n")
  proc.stdin.flush()
  # Before the trainer ends: a preempted VM may never reach its end.
  assert _wait_for(lambda: b"step 1" in _cat(dest)), "no part written while running"
  assert proc.poll() is None
  proc.stdin.write(b"step 2 loss 3.1\nTraceback (most recent call last):\n")
  proc.stdin.close()
  assert proc.wait(timeout=30) == 0
  text = b"step 1 loss 3.5\nstep 2 loss 3.1\nTraceback (most recent call last):\n"
  assert _cat(dest) == text
  assert proc.stdout.read() == text  # the local log gets every byte unchanged
  assert len(log_stream.part_names(str(dest))) >= 2


def test_sigterm_does_not_cut_the_last_lines(tmp_path):
  # A preemption signals every process on the VM; the streamer must outlive the trainer's
  # last line (its traceback) and write it.
  dest = tmp_path / "d"
  proc = _start(dest, every="60")
  proc.stdin.write(b"saving checkpoint at step 7\n")
  proc.stdin.flush()
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.2)
  assert proc.poll() is None
  proc.stdin.write(b"exit 75\n")
  proc.stdin.close()
  assert proc.wait(timeout=30) == 0
  assert _cat(dest) == b"saving checkpoint at step 7\nexit 75\n"


def test_a_refused_write_keeps_its_bytes_for_the_next_part(tmp_path, monkeypatch):
  dest = str(tmp_path / "d")
  logs = log_stream.LogStream(dest, every=1.0, err=io.StringIO())
  real_open = log_stream.paths.open
  monkeypatch.setattr(log_stream.paths, "open",
                      lambda *a, **k: (_ for _ in ()).throw(OSError("503 Service Unavailable")))
  logs.add(b"line 1\n")
  assert not logs.flush()
  assert "503" in logs.err.getvalue() and log_stream.part_names(dest) == []
  monkeypatch.setattr(log_stream.paths, "open", real_open)
  logs.add(b"line 2\n")
  assert logs.flush()
  assert _cat(dest) == b"line 1\nline 2\n"
  assert log_stream.part_names(dest) == ["part-000000.log"]


def test_a_restarted_streamer_goes_on_after_the_existing_parts(tmp_path):
  dest = str(tmp_path / "d")
  first = log_stream.LogStream(dest)
  for line in (b"a\n", b"b\n"):
    first.add(line)
    first.flush()
  second = log_stream.LogStream(dest)
  second.add(b"c\n")
  second.flush()
  assert log_stream.part_names(dest) == ["part-000000.log", "part-000001.log", "part-000002.log"]
  assert _cat(dest) == b"a\nb\nc\n"


def _cat(dest) -> bytes:
  out = io.BytesIO()
  log_stream.cat(str(dest), out)
  return out.getvalue()
