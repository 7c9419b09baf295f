"""The fast checkpoint tier: each process keeps its own shards of the train state, and its
data-iterator position, on a disk of its own host (`checkpoint.local_dir`). A restart on the same
hosts reads them back, before and instead of the persistent checkpoints in WORKDIR/checkpoints.

Why our own tier and not Orbax's emergency checkpointing (orbax-checkpoint 0.12.8,
`orbax.checkpoint.experimental.emergency`): its CheckpointManager raises "at least 2
data-parallel replicas are needed" unless the mesh has a replica axis of size 2 or more, and the
8B recipe on one slice is FSDP over every chip (`mesh.shape=(1,-1,1)`: one replica), so it cannot
run there; its local restore, and its P2P variant's, rebuild a lost host's state from another
replica's copy, which a single FSDP slice does not hold. A restart on the same hosts needs less:
each process's own shards, back on the same devices. So this tier writes exactly those, on any
mesh, with no collective on the save path.

Per process, `LOCAL_DIR/process_<i>-of-<n>/<step>/` holds `shards.bin` (the distinct shards of
every array this process holds, raw bytes, one after another) and `manifest.json` (the workdir,
every array's shape, dtype and shard index ranges with byte offsets) and `data/`, the
data-iterator state written by Grain's checkpoint handler, as in the persistent checkpoints'
`data` item (training/checkpoint.py). A save copies the shards to host memory, and takes the
iterator's state, on the step's path, then a background thread writes them to
`<step>.partial/`, fsyncs, and renames it to `<step>/`. Only a renamed folder whose `shards.bin`
has the manifest's byte count is complete; nothing else is ever read (partial folders are removed
when the tier starts).

On restore every process lists its complete steps written for this workdir, by this process
count, holding every shard the current mesh places on its devices; the processes agree (one
all-gather) on the newest step that all of them hold. It is used when it is at least as new as the
newest persistent checkpoint; otherwise, or when one host lost its disk (a replaced host has no
local steps), the run restores from the persistent tier. Never a partial step, never a mix.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from reasonir_jax import paths
from reasonir_jax.training.checkpoint import DATA_ITEM, agree, data_iterator_args
from reasonir_jax.training.state import TrainState

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the data state in data/ (Grain's handler); 1 had it in the manifest
MANIFEST = "manifest.json"
SHARDS = "shards.bin"
PARTIAL = ".partial"
LISTED_STEPS = 8  # steps per process compared on restore (keep is 1-2; stale extras are ignored)


# ---- the data iterator's position: the one place the tier reads and sets it ---------------------
def data_state_of(data_iterator) -> Any:
  """The iterator's position as a JSON value (what `set_data_state` takes back)."""
  return data_iterator.get_state()


def set_data_state(data_iterator, data_state: Any) -> None:
  data_iterator.set_state(data_state)


def _write_data_state(folder: str, data_args) -> None:
  """Grain's checkpoint handler writes this process's file, `data/process_<i>-of-<n>.json`
  (`data_args`: `data_iterator_args` of the state, made when the save started)."""
  os.makedirs(os.path.join(folder, DATA_ITEM))
  grain.checkpoint.CheckpointHandler().save(epath.Path(folder) / DATA_ITEM, args=data_args)
  for name in os.listdir(os.path.join(folder, DATA_ITEM)):
    with open(os.path.join(folder, DATA_ITEM, name), "rb+") as f:
      os.fsync(f.fileno())


def _read_data_state(folder: str) -> Any:
  args = data_iterator_args(None, restore=True)
  grain.checkpoint.CheckpointHandler().restore(epath.Path(folder) / DATA_ITEM, args=args)
  return args.item.state


# ---- shards as bytes ---------------------------------------------------------------------------
def _named_leaves(tree) -> list[tuple[str, Any]]:
  return [(jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _ranges(index: tuple, shape: tuple) -> list[list[int]]:
  """A shard's index (slices) as [[start, stop], ...], comparable across runs."""
  return [[s.start or 0, n if s.stop is None else s.stop] for s, n in zip(index, shape)]


def _host_shards(state: TrainState) -> tuple[list[dict], list[np.ndarray]]:
  """(manifest entries, host buffers) of the distinct shards this process holds: the
  device-to-host copy, the only part of a save on the step's path."""
  leaves = _named_leaves(state)
  for _, x in leaves:
    x.copy_to_host_async()  # every copy in flight before the first wait
  entries, buffers, offset = [], [], 0
  for name, x in leaves:
    shards = []
    seen = set()
    for shard in x.addressable_shards:
      ranges = _ranges(shard.index, x.shape)
      if str(ranges) in seen:  # replicated: one copy serves every device holding it
        continue
      seen.add(str(ranges))
      # On CPU the numpy view would alias the device buffer: copy, as a TPU's transfer does.
      on_cpu = shard.device.platform == "cpu"
      data = np.array(shard.data, order="C", copy=True if on_cpu else None)
      shards.append({"index": ranges, "offset": offset, "nbytes": int(data.nbytes)})
      buffers.append(data)
      offset += data.nbytes
    entries.append({"name": name, "shape": list(x.shape), "dtype": str(x.dtype), "shards": shards})
  return entries, buffers


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class LocalCheckpointTier:
  """Saves (TrainState, data state) of this process to `local_dir/process_<i>-of-<n>/<step>/`."""

  def __init__(self, workdir: str, cfg: ml_collections.ConfigDict):
    local_dir = str(cfg.get("local_dir", "") or "")
    if paths.is_remote(local_dir):
      raise ValueError(f"checkpoint.local_dir={local_dir!r} must be a disk of each host, not "
                       "remote storage (the persistent checkpoints already go to the workdir)")
    self.every_steps = int(cfg.get("local_every_steps", 0) or 0)
    self.every_seconds = float(cfg.get("local_every_seconds", 0) or 0)
    if self.every_steps <= 0 and self.every_seconds <= 0:
      raise ValueError(f"checkpoint.local_dir={local_dir!r} is set but neither "
                       "checkpoint.local_every_steps nor checkpoint.local_every_seconds is > 0")
    self.keep = int(cfg.get("local_keep", 1))
    if self.keep < 1:
      raise ValueError(f"checkpoint.local_keep={self.keep} must be at least 1")
    self.workdir = paths.absolute(workdir)
    self.directory = os.path.join(os.path.abspath(local_dir),
                                  f"process_{jax.process_index()}-of-{jax.process_count()}")
    os.makedirs(self.directory, exist_ok=True)
    for name in os.listdir(self.directory):
      if name.endswith(PARTIAL):  # a save a crash cut short
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    self._last_start = time.monotonic()
    self._writer: threading.Thread | None = None
    self._error: BaseException | None = None
    self._abandoned = False
    self.last_blocking_seconds: float | None = None
    self.last_write_seconds: float | None = None
    self.last_bytes: int | None = None

  @classmethod
  def from_config(cls, workdir: str, cfg: ml_collections.ConfigDict) -> LocalCheckpointTier | None:
    """The tier, or None when `checkpoint.local_dir` is empty (off)."""
    return cls(workdir, cfg) if cfg.get("local_dir") else None

  # -- saving ------------------------------------------------------------------------------------
  def due(self, step: int) -> bool:
    """The step cadence, or the time cadence on process 0's clock (every process saves the same
    steps, so they can agree on one at restore)."""
    if self.every_steps > 0 and step % self.every_steps == 0:
      return True
    if self.every_seconds <= 0:
      return False
    return agree(time.monotonic() - self._last_start >= self.every_seconds)

  def restart_clock(self) -> None:
    """A persistent save just started: the time cadence counts from it (a restore would use
    that one anyway, being as new)."""
    self._last_start = time.monotonic()

  def save(self, state: TrainState, data_state: Any, step: int) -> None:
    """Copies this process's shards to host memory and writes them in the background."""
    self.wait()  # one write at a time: host memory holds at most one extra copy of the shards
    start = time.monotonic()
    entries, buffers = _host_shards(state)
    self.last_blocking_seconds = time.monotonic() - start
    self._last_start = start
    manifest = {"format": FORMAT, "step": int(step), "workdir": self.workdir,
                "process_index": jax.process_index(), "process_count": jax.process_count(),
                "bytes": int(sum(b.nbytes for b in buffers)), "arrays": entries,
                "has_data_state": data_state is not None}
    # The item's args hold a snapshot of the state taken now: the iterator moves on while the
    # writer runs.
    data_args = data_iterator_args(data_state) if data_state is not None else None
    self._writer = threading.Thread(target=self._write, args=(manifest, buffers, data_args),
                                    daemon=True, name="local-checkpoint-writer")
    self._writer.start()

  def _write(self, manifest: dict, buffers: list[np.ndarray], data_args) -> None:
    start = time.monotonic()
    step = manifest["step"]
    final = os.path.join(self.directory, str(step))
    partial = final + PARTIAL
    try:
      shutil.rmtree(partial, ignore_errors=True)
      os.makedirs(partial)
      with open(os.path.join(partial, SHARDS), "wb") as f:
        for b in buffers:
          f.write(b.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())
      if data_args is not None:
        _write_data_state(partial, data_args)
      with open(os.path.join(partial, MANIFEST), "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
      shutil.rmtree(final, ignore_errors=True)
      os.replace(partial, final)  # the commit: a folder named by its step is complete
      _fsync_dir(self.directory)
      self.last_write_seconds = time.monotonic() - start
      self.last_bytes = manifest["bytes"]
      # Steps past this one are from a timeline a restart abandoned (it resumed from an older
      # persistent checkpoint): never newer than the run, so never restored over it.
      steps = self.complete_steps()
      stale = [s for s in steps if s > step] + [s for s in steps if s <= step][self.keep:]
      for old in stale:
        shutil.rmtree(os.path.join(self.directory, str(old)), ignore_errors=True)
    except BaseException as e:  # noqa: BLE001 - reported by the next save() or wait()
      self._error = e

  def wait(self) -> None:
    """Blocks until the write in flight is complete; raises if it failed."""
    if self._writer is not None:
      self._writer.join()
      self._writer = None
    if self._error is not None:
      error, self._error = self._error, None
      raise OSError(f"local checkpoint write in {self.directory} (checkpoint.local_dir) failed: "
                    f"{error}") from error

  def abandon(self) -> None:
    """The process is about to exit: leave a write in flight unfinished (never committed)."""
    self._abandoned = True

  def close(self) -> None:
    if not self._abandoned:
      self.wait()

  # -- restoring ---------------------------------------------------------------------------------
  def complete_steps(self) -> list[int]:
    """Committed steps in this process's folder, newest first (their contents not yet checked)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted((int(n) for n in os.listdir(self.directory) if n.isdigit()), reverse=True)

  def _manifest(self, step: int) -> dict:
    with open(os.path.join(self.directory, str(step), MANIFEST)) as f:
      return json.load(f)

  def _unusable(self, step: int, abstract_state: TrainState) -> str | None:
    """Why this process cannot restore `step` into `abstract_state` (None: it can)."""
    folder = os.path.join(self.directory, str(step))
    try:
      manifest = self._manifest(step)
      size = os.path.getsize(os.path.join(folder, SHARDS))
    except (OSError, ValueError) as e:
      return f"unreadable ({e})"
    if manifest.get("format") != FORMAT or manifest.get("step") != step:
      return "not a local checkpoint of this format"
    if manifest.get("workdir") != self.workdir:
      return f"written for workdir {manifest.get('workdir')!r}"
    if manifest.get("process_count") != jax.process_count():
      return f"written by {manifest.get('process_count')} processes"
    if size != manifest.get("bytes"):
      return f"{SHARDS} has {size} bytes, the manifest {manifest.get('bytes')}"
    stored = manifest["arrays"]
    wanted = _named_leaves(abstract_state)
    if [a["name"] for a in stored] != [n for n, _ in wanted]:
      return "holds other arrays than this config's train state"
    for entry, (name, x) in zip(stored, wanted):
      if tuple(entry["shape"]) != tuple(x.shape) or jnp.dtype(entry["dtype"]) != x.dtype:
        return (f"{name} is {entry['dtype']}{entry['shape']}, the config needs "
                f"{x.dtype}{list(x.shape)}")
      have = {str(s["index"]) for s in entry["shards"]}
      for index in x.sharding.addressable_devices_indices_map(x.shape).values():
        if str(_ranges(index, x.shape)) not in have:
          return f"{name} lacks the shard {_ranges(index, x.shape)} (another mesh)"
    return None

  def agreed_step(self, abstract_state: TrainState) -> int | None:
    """The newest step every process can restore (a collective: call on every process)."""
    usable = []
    for step in self.complete_steps()[:LISTED_STEPS]:
      why = self._unusable(step, abstract_state)
      if why is None:
        usable.append(step)
      else:
        log.info("local checkpoint %s/%d not usable: %s", self.directory, step, why)
    row = np.full(LISTED_STEPS, -1, np.int32)
    row[:len(usable)] = usable
    if jax.process_count() == 1:
      rows = row[None]
    else:
      rows = np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), -1)
    common = set.intersection(*({int(s) for s in r if s >= 0} for r in rows))
    return max(common, default=None)

  def restore(self, abstract_state: TrainState, persistent_step: int | None
              ) -> tuple[TrainState, Any, int] | None:
    """(state, data state, step) of the agreed local step when it is at least as new as
    `persistent_step` (the newest persistent checkpoint); None: restore from the persistent tier."""
    step = self.agreed_step(abstract_state)
    if step is None or (persistent_step is not None and step < persistent_step):
      log.info("local tier: no step as new as the persistent one (%s) on every process "
               "(agreed: %s)", persistent_step, step)
      return None
    manifest = self._manifest(step)
    raw = np.memmap(os.path.join(self.directory, str(step), SHARDS), np.uint8, mode="r")
    leaves = []
    for entry, (_, x) in zip(manifest["arrays"], _named_leaves(abstract_state)):
      dtype = jnp.dtype(entry["dtype"])
      by_index = {str(s["index"]): s for s in entry["shards"]}
      pieces = []
      for device, index in x.sharding.addressable_devices_indices_map(x.shape).items():
        s = by_index[str(_ranges(index, x.shape))]
        shape = [b - a for a, b in s["index"]]
        host = np.array(raw[s["offset"]:s["offset"] + s["nbytes"]]).view(dtype).reshape(shape)
        pieces.append(jax.device_put(host, device))
      leaves.append(jax.make_array_from_single_device_arrays(x.shape, x.sharding, pieces))
    del raw
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_state), leaves)
    folder = os.path.join(self.directory, str(step))
    return state, (_read_data_state(folder) if manifest["has_data_state"] else None), step
