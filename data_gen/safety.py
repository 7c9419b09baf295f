"""Multi-machine safety for one output directory: a lock per stage (two launches of one shard
are refused), one shard count per run name (re-sharding into a used directory is refused), and
a coverage check over the shards' manifests and ledgers that lists every input id missing.
The shard-count check and the coverage read a local or a remote (gs://) output directory.
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import time
from typing import Iterable

from reasonir_jax import paths

LOCK_FILE = "lock.json"
_SHARD_RE = re.compile(r"-shard(\d{5})of(\d{5})")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class StageLock:
  """An exclusive lock on a stage directory: a lock file created with O_EXCL (atomic on local
  and NFS v3+ filesystems), holding the owner's host and pid. A lock left by a dead process on
  this host is taken over; one held by another host is refused unless `break_lock` (the owner
  is known to be gone, e.g. a dead machine)."""

  def __init__(self, stage_dir: str, break_lock: bool = False):
    self.path = os.path.join(stage_dir, LOCK_FILE)
    self.break_lock = break_lock
    self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}

  def _holder(self) -> dict | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, json.JSONDecodeError):
      return {"host": "?", "pid": -1, "since": 0}

  def _stale(self, holder: dict) -> bool:
    return holder.get("host") == self.owner["host"] and not _pid_alive(int(holder.get("pid", -1)))

  def acquire(self) -> None:
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None:
          continue  # released meanwhile
        if self.break_lock or self._stale(holder):
          os.remove(self.path)
          continue
        raise ValueError(
            f"{os.path.dirname(self.path)} is locked by host {holder.get('host')!r} pid "
            f"{holder.get('pid')} (since {time.ctime(holder.get('since', 0))}): the same shard "
            f"is already running. If that run is dead, pass --break-lock or delete {self.path}")
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(self.owner, f)
        f.flush()
        os.fsync(f.fileno())
      return
    raise ValueError(f"could not take the lock {self.path}")

  def release(self) -> None:
    holder = self._holder()
    if holder is not None and holder.get("host") == self.owner["host"] and \
        holder.get("pid") == self.owner["pid"]:
      os.remove(self.path)

  def __enter__(self) -> "StageLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _matching(output_dir: str, name: str, suffix: str, in_stage: bool = False) -> list[str]:
  """Paths `output_dir[/_stage]/NAME<suffix>` (local or remote; `suffix` may hold wildcards,
  the folder and name are taken literally); [] when none."""
  escape = (lambda s: s) if paths.is_remote(output_dir) else glob.escape
  folder = paths.join(escape(output_dir), "_stage") if in_stage else escape(output_dir)
  try:
    return paths.glob(paths.join(folder, escape(name) + suffix))
  except FileNotFoundError:
    return []


def shard_counts_in(output_dir: str, name: str) -> dict[int, list[str]]:
  """num_shards -> the files/stage dirs of run `name` in `output_dir` made with it."""
  found: dict[int, list[str]] = {}
  for path in (_matching(output_dir, name, "-shard*") +
               _matching(output_dir, name, "-shard*", in_stage=True)):
    rest = os.path.basename(path)[len(name):]
    match = _SHARD_RE.match(rest)
    if match:
      found.setdefault(int(match.group(2)), []).append(path)
  return found


def check_shard_count(output_dir: str, name: str, num_shards: int) -> None:
  """Refuses a run whose --num-shards differs from what this directory already holds for the
  same run name: the `NAME-*.tfrecord` glob would mix both splits (duplicated or lost rows)."""
  other = {n: p for n, p in shard_counts_in(output_dir, name).items() if n != num_shards}
  if other:
    desc = "; ".join(f"{n} shards ({len(p)} files, e.g. {os.path.basename(p[0])})"
                     for n, p in sorted(other.items()))
    raise ValueError(
        f"{output_dir} already holds run {name!r} split into {desc}, not --num-shards "
        f"{num_shards}: keep the shard count, or use another --output-dir or --name")


def _ledger_ids(path: str) -> Iterable[str]:
  """Committed ids of a ledger, read-only (a torn last line of a live run is skipped)."""
  if not paths.exists(path):
    return
  with paths.open(path, "rb") as f:
    for line in f:
      try:
        yield json.loads(line)["id"]
      except (json.JSONDecodeError, KeyError):
        continue


def coverage(output_dir: str, name: str, expected_ids: Iterable[str]) -> dict:
  """Which expected input ids no shard has committed. Reads every `NAME-shard*.manifest.json`
  (all must agree on the shard count; a missing shard index is reported) and the ledger of
  each shard's stage (the committed ids)."""
  manifests = _matching(output_dir, name, "-shard*.manifest.json")
  counts = sorted(shard_counts_in(output_dir, name))
  if len(counts) > 1:
    raise ValueError(f"{output_dir}: run {name!r} mixes shard counts {counts}")
  num_shards = counts[0] if counts else None
  done: set[str] = set()
  seen_shards = set()
  for path in manifests:
    with paths.open(path, "rb") as f:
      manifest = json.load(f)
    seen_shards.add(manifest["shard_index"])
    stage = manifest.get("stage_dir") or paths.join(
        "_stage", os.path.basename(path)[:-len(".manifest.json")])
    done.update(_ledger_ids(paths.join(output_dir, stage, "ledger.jsonl")))
  expected = list(dict.fromkeys(expected_ids))
  missing = [i for i in expected if i not in done]
  return {
      "name": name, "num_shards": num_shards, "manifests": len(manifests),
      "missing_shards": sorted(set(range(num_shards or 0)) - seen_shards),
      "expected": len(expected), "done": len(expected) - len(missing),
      "missing": len(missing), "missing_ids": missing,
      "unexpected": len(done - set(expected)),
  }
