"""Orbax checkpoints of the train state and the data iterator: `WORKDIR/checkpoints/<step>/`.

Each checkpoint holds four items: `params` (named by parameter path, so an export can read just
them), `opt_state`, `meta` (JSON: step, RNG key, process count) and `data`, the input
pipeline's position, written by Grain's Orbax checkpoint handler: one JSON file per process,
`data/process_<i>-of-<n>.json`, so on restore every process gets back its own read position
(`data_iterator_args` builds the item's arguments, for any Orbax manager). Saves are
asynchronous and atomic: Orbax writes into a temporary directory and renames it when every
process has finished, so a crash mid-save never leaves a step that looks complete. Restoring
places every array in the *current* mesh's sharding, whatever mesh wrote it. A data position
belongs to the process count that wrote it (a process's share of the records depends on it):
restoring it on another count is an error that says what to do.

Saves are due every `checkpoint.every_steps` steps and, with `checkpoint.every_seconds`, once
that much time has passed since the last one started (process 0's clock decides for all, so
every process enters the collective save at the same step). The step only waits for the
device-to-host copy; the write to storage runs in the background. Each save's duration (start
to commit) is measured, which is what `preemption_plan` uses to decide whether a save still fits
the grace window of a preemption notice.

The resolved config is saved as `WORKDIR/config.json` so export and evaluation can rebuild the model.
The workdir may be remote (gs://): every path goes through reasonir_jax.paths and Orbax is given
the remote path unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from reasonir_jax import paths
from reasonir_jax.training.state import TrainState

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DATA_ITEM = "data"
# Where checkpoints before the `data` item kept each process's data position (still detected,
# to say why they cannot be resumed).
OLD_DATA_STATE_DIR = "data_state"


# ---- the data-iterator item --------------------------------------------------------------------
class _DataState(grain.DatasetIterator):
  """An input-pipeline state as Grain's checkpoint handler takes it (the handler saves a Grain
  iterator's get_state() as JSON): on save, a snapshot taken when the save starts, so the file
  holds the position at the checkpoint's step whenever Orbax writes it; on restore, the state
  read back, also handed to `target.set_state` when there is a target."""

  def __init__(self, state: Any = None, target: Any = None):
    super().__init__()
    self.state, self.target = state, target

  def __next__(self):
    raise StopIteration  # a state, not a stream

  def get_state(self) -> Any:
    return self.state

  def set_state(self, state: Any) -> None:
    self.state = state
    if self.target is not None:
      self.target.set_state(state)


def data_iterator_args(data: Any, *, restore: bool = False):
  """The Orbax args of the data-iterator item (Grain's checkpoint handler, one JSON file per
  process). Saving: `data` is an iterator with get_state() (a Grain DatasetIterator or any
  other) or a state itself; restoring: `data` is the iterator to set (set_state), or None to
  only read the state back (the returned args' `.item.state`)."""
  if restore:
    return grain.checkpoint.CheckpointRestore(_DataState(target=data))
  state = data.get_state() if hasattr(data, "get_state") else data
  return grain.checkpoint.CheckpointSave(_DataState(json.loads(json.dumps(state))))


# ---- naming the leaves -------------------------------------------------------------------------
def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat_params(params) -> dict[str, Any]:
  """{"layers.attn.q_proj": array, ...}: one entry per parameter, named by its path."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [_key_name(k) for k in path if _key_name(k) != "value"]
    out[".".join(names)] = leaf
  return out


def _flat_leaves(tree) -> dict[str, Any]:
  """Any pytree as {"00012_<path>": leaf}, in flattening order (the index keeps names unique)."""
  out = {}
  for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(tree)):
    name = re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")
    out[f"{i:05d}_{name}"[:120]] = leaf
  return out


def _unflatten(flat: dict[str, Any], like) -> Any:
  """Rebuilds a tree shaped like `like` from a dict made by `_flat_params` or `_flat_leaves`."""
  treedef = jax.tree_util.tree_structure(like)
  return jax.tree_util.tree_unflatten(treedef, list(flat.values()))


def _abstract(flat: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
          for k, v in flat.items()}


def check_stored(item_dir: str, wanted: dict[str, Any]) -> None:
  """Raises a ValueError naming each missing, unexpected or reshaped tensor of a stored item, so
  a checkpoint that does not match the config fails clearly before Orbax starts reading."""
  try:
    stored = ocp.StandardCheckpointer().metadata(item_dir)
  except Exception as e:  # noqa: BLE001 - any unreadable metadata is reported the same way
    raise ValueError(f"cannot read checkpoint metadata in {item_dir}: {e}") from e
  stored = getattr(stored, "item_metadata", stored)
  stored = dict(stored.items()) if stored is not None else {}
  problems = [f"missing tensor {k!r}" for k in wanted if k not in stored]
  problems += [f"unexpected tensor {k!r}" for k in stored if k not in wanted]
  for k, v in wanted.items():
    shape = getattr(stored.get(k), "shape", None)
    if k in stored and shape is not None and tuple(shape) != tuple(v.shape):
      problems.append(f"tensor {k!r} is stored as {tuple(shape)}, the config needs {tuple(v.shape)}")
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise ValueError(f"checkpoint {item_dir} does not match the model config: {shown}")


# ---- the config beside the checkpoints ---------------------------------------------------------
def save_config(workdir: str, config: ml_collections.ConfigDict, tokenizer_path: str = "") -> str:
  """Writes the resolved config (and the tokenizer it trained with) as JSON; process 0 only."""
  path = paths.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    paths.makedirs(workdir)
    payload = {"config": json.loads(config.to_json_best_effort()), "tokenizer_path": tokenizer_path}
    paths.write_text(path, json.dumps(payload, indent=2))
  return path


def load_saved_config(workdir: str) -> tuple[ml_collections.ConfigDict, str]:
  """(config, tokenizer_path) written by `save_config`."""
  path = paths.join(workdir, CONFIG_FILE)
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a training workdir?")
  payload = json.loads(paths.read_text(path))
  cfg = ml_collections.ConfigDict(_tuples(payload["config"]))
  return cfg, payload.get("tokenizer_path", "")


def _tuples(x):
  """JSON turns tuples into lists; configs use tuples (mesh shape, rules, buckets)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


# ---- the manager -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PreemptionPlan:
  """What to do at a preemption: save (and wait) or exit at once, and why (for the log)."""
  save: bool
  wait: bool
  reason: str


def agree(flag: bool) -> bool:
  """Process 0's value of `flag` on every process (decisions that gate collective saves)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class CheckpointManager:
  """Saves and restores (TrainState, data iterator state) under `workdir/checkpoints/<step>/`."""

  def __init__(self, workdir: str, ckpt_cfg: ml_collections.ConfigDict | None = None):
    cfg = ckpt_cfg if ckpt_cfg is not None else ml_collections.ConfigDict()
    every = int(cfg.get("every_steps", 1))
    self.every_steps = max(every, 1)
    self.every_seconds = float(cfg.get("every_seconds", 0) or 0)
    self.grace_seconds = float(cfg.get("preemption_grace_seconds", 30))
    keep = int(cfg.keep) if cfg.get("keep") is not None else None
    async_save = bool(cfg.get("async_save", False))
    self.directory = paths.absolute(paths.join(workdir, CHECKPOINT_DIR))
    self.old_data_state_dir = paths.absolute(paths.join(workdir, OLD_DATA_STATE_DIR))
    # Timing of the saves (time.monotonic): the one in flight, and the last committed one's
    # duration, start to commit, and its blocking part (what the step waited for).
    self._lock = threading.Lock()
    self._started: float | None = None
    self._last_start = time.monotonic()
    self.last_save_seconds: float | None = None
    self.last_blocking_seconds: float | None = None
    self.last_wait_seconds: float | None = None
    self.async_save = async_save
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("params", "opt_state", "meta", DATA_ITEM))
    self._abandoned = False

  def _committed(self, start: float, ok: bool = True) -> None:
    with self._lock:
      if ok:
        self.last_save_seconds = time.monotonic() - start
      if self._started == start:  # not yet replaced by the next save's start
        self._started = None

  def _watch_commit(self, finalize_thread, start: float) -> None:
    """Records when this save's background commit (Orbax's finalize thread) ends."""
    finalize_thread.join()
    self._committed(start, ok=getattr(finalize_thread, "exception", None) is None)

  def saving(self) -> bool:
    """True while a save started here has not been committed."""
    with self._lock:
      return self._started is not None

  def due(self, step: int) -> bool:
    """Whether `step` is a checkpoint step: the step cadence, or the time cadence (process 0's
    clock, so every process agrees)."""
    if step % self.every_steps == 0:
      return True
    if self.every_seconds <= 0:
      return False
    return agree(time.monotonic() - self._last_start >= self.every_seconds)

  def preemption_plan(self, notice_time: float, saved_this_step: bool) -> PreemptionPlan:
    """Save at a preemption only if it fits the grace window left since the notice.

    A save that cannot commit before the machine goes would only be a partial one (discarded
    on restart), and the step it reached is lost either way, so the run then exits at once and
    the newest complete checkpoint stays the one to resume from. The estimate is the last
    save's measured duration; before any save has been measured the run tries to save.
    """
    now = time.monotonic()
    left = self.grace_seconds - (now - notice_time)
    with self._lock:
      in_flight = (now - self._started) if self._started is not None else None
    estimate = self.last_save_seconds
    if estimate is None:
      plan = PreemptionPlan(not saved_this_step, True, "no save measured yet: trying")
    else:
      pending = max(estimate - in_flight, 0.0) if in_flight is not None else 0.0
      need = pending + (0.0 if saved_this_step else estimate)
      fits = need <= left
      what = "the save in flight" if saved_this_step else "a save"
      plan = PreemptionPlan(fits and not saved_this_step, fits,
                            f"{what} needs ~{need:.1f} s, {left:.1f} s of the "
                            f"{self.grace_seconds:.0f} s grace window left")
    agreed = agree(plan.wait)
    if agreed != plan.wait:
      plan = PreemptionPlan(agreed and not saved_this_step, agreed, plan.reason + " (process 0 decided)")
    return plan

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, data_iterator: Any = None, *, step: int | None = None,
           force: bool = False) -> bool:
    """Starts a save of `state` and the position of `data_iterator` (its get_state(), taken now;
    or a state itself) at `step` (default: read from the state) when the step is due (every
    `every_steps`) or with force; returns whether a save started."""
    step = int(jax.device_get(state.step)) if step is None else int(step)
    if not force and not self.due(step):
      return False
    # A save still committing must end first (Orbax would wait inside save()); timed apart, so
    # `last_blocking_seconds` is this save's own stall: the device-to-host copy.
    jax.block_until_ready(state)  # the step itself must end first; not counted as the stall
    waited = time.monotonic()
    self._manager.wait_until_finished()
    self.last_wait_seconds = time.monotonic() - waited
    start = time.monotonic()
    meta = {"step": step, "rng": np.asarray(jax.device_get(state.rng)).tolist(),
            "process_count": jax.process_count(), "has_data_state": data_iterator is not None}
    items = dict(params=ocp.args.StandardSave(_flat_params(state.params)),
                 opt_state=ocp.args.StandardSave(_flat_leaves(state.opt_state)),
                 meta=ocp.args.JsonSave(meta))
    if data_iterator is not None:
      items[DATA_ITEM] = data_iterator_args(data_iterator)
    args = ocp.args.Composite(**items)
    with self._lock:
      self._started = start  # in flight until its commit is seen (_committed)
    saved = self._manager.save(step, args=args, force=True)
    blocking = time.monotonic() - start
    if not saved:
      with self._lock:
        self._started = None
      return False
    self._last_start = start
    self.last_blocking_seconds = blocking
    # Orbax reports no commit time: watch its finalize thread (pinned orbax; private field).
    finalize = self._manager._finalize_thread.map(lambda t: t) if self.async_save else None  # noqa: SLF001
    if finalize is None:
      self._committed(start)
    else:
      threading.Thread(target=self._watch_commit, args=(finalize, start), daemon=True,
                       name="checkpoint-commit-watch").start()
    log.info("checkpoint: saving step %d to %s (the step waited %.2f s)", step, self.directory,
             blocking)
    return saved

  # -- the data item on restore -------------------------------------------------------------------
  def _check_process_count(self, step: int, meta: dict) -> None:
    written_by, count = meta.get("process_count"), jax.process_count()
    if written_by is not None and int(written_by) != count:
      raise ValueError(
          f"checkpoint step {step} in {self.directory} was written by {written_by} processes, "
          f"this run has {count}: each process's data position is in its own share of the "
          f"records, and the shares depend on the process count; so resume with {written_by} "
          f"processes (same hosts/slice shape), or start a new workdir from an export of this "
          f"one (--config.init_from)")

  def _old_data_state(self, step: int, meta: dict) -> Any:
    """The data position of a checkpoint from before the data item: its process's file in the
    data_state/ tree (or, older still, meta's "data"). The input iterator accepts the
    one-process ones (one process's share is every record, as it was) and refuses the others."""
    index, count = jax.process_index(), jax.process_count()
    path = paths.join(self.old_data_state_dir, str(step), f"process_{index}-of-{count}.json")
    if paths.isfile(path):
      return json.loads(paths.read_text(path))
    if "data" in meta and count == 1:
      return meta["data"]
    self._check_process_count(step, meta)
    raise FileNotFoundError(f"{path} not found: the data-iterator state of process {index} "
                            f"for checkpoint step {step}")

  def restore(self, abstract_state: TrainState, step: int | None = None,
              data_iterator: Any = None) -> tuple[TrainState, Any]:
    """(state, data state) of `step` (default: the latest), each array in the sharding of
    `abstract_state` (ShapeDtypeStructs, e.g. `Trainer.abstract_state()`). The data state (None
    when the checkpoint has none) is also set into `data_iterator` when one is given."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    flat_p = _abstract(_flat_params(abstract_state.params))
    flat_o = _abstract(_flat_leaves(abstract_state.opt_state))
    check_stored(paths.join(self.directory, str(step), "params"), flat_p)
    check_stored(paths.join(self.directory, str(step), "opt_state"), flat_o)
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    items = dict(params=ocp.args.StandardRestore(flat_p), opt_state=ocp.args.StandardRestore(flat_o))
    data_state = None
    if paths.isdir(paths.join(self.directory, str(step), DATA_ITEM)):
      self._check_process_count(step, meta)
      items[DATA_ITEM] = data_iterator_args(data_iterator, restore=True)
    elif meta.get("has_data_state", "data" in meta):
      data_state = self._old_data_state(step, meta)
      if data_iterator is not None:
        data_iterator.set_state(data_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    params = _unflatten({k: restored["params"][k] for k in flat_p}, abstract_state.params)
    opt_state = _unflatten({k: restored["opt_state"][k] for k in flat_o}, abstract_state.opt_state)
    step_arr = jax.device_put(np.asarray(meta["step"], np.int32), abstract_state.step.sharding)
    rng = jax.device_put(np.asarray(meta["rng"], np.uint32), abstract_state.rng.sharding)
    state = TrainState(step=step_arr, params=params, opt_state=opt_state, rng=rng)
    return state, (items[DATA_ITEM].item.state if DATA_ITEM in items else data_state)

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the parameters (for export), in the shardings of `abstract_params`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(have: {self.all_steps()})")
    flat_p = _abstract(_flat_params(abstract_params))
    check_stored(paths.join(self.directory, str(step), "params"), flat_p)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(flat_p)))
    return _unflatten({k: restored["params"][k] for k in flat_p}, abstract_params)

  def reached_preemption(self, step: int) -> bool:
    """True on every process at the sync step JAX's preemption service agreed on."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until an asynchronous save has been committed."""
    self._manager.wait_until_finished()

  def abandon(self) -> None:
    """Leaves a save in flight unfinished (the process is about to exit): `close` then returns
    at once; the partial step is never committed, and a restart removes it."""
    self._abandoned = True

  def close(self) -> None:
    if not self._abandoned:
      self._manager.close()


def restore_params(workdir: str, step: int | None = None, mesh=None, rules=None):
  """(params_state, model_cfg, tokenizer_path) of a training workdir's checkpoint (latest by
  default): the encoder's `nnx.State` of Params in the stored dtype, each restored straight into
  its sharding under `rules` on `mesh` (every process reads only its blocks), or onto the first
  local device without a mesh; for `nnx.merge` / `nnx.update` with a `LlamaEncoder(model_cfg)`.
  Export and `Encoder.from_pretrained` both read workdirs through it."""
  from reasonir_jax.model import ModelConfig
  from reasonir_jax.model.sharded import abstract_model
  config, tokenizer_path = load_saved_config(workdir)
  model_cfg = ModelConfig.from_config(config.model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  _, targets = abstract_model(model_cfg, mesh, rules, filters=(nnx.Param,), device=device)
  if not paths.isdir(paths.join(workdir, CHECKPOINT_DIR)):
    raise FileNotFoundError(f"{workdir!r} has no {CHECKPOINT_DIR}/ folder: not a training workdir")
  manager = CheckpointManager(workdir)
  try:
    params = manager.restore_params(targets, step)
  finally:
    manager.close()
  return params, model_cfg, tokenizer_path


def load_params_for_export(workdir: str, step: int | None = None):
  """`restore_params` onto the default device (the name export used; kept for one release)."""
  return restore_params(workdir, step)
