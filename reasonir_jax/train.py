"""Contrastive training of the ReasonIR encoder on a device mesh.

  python -m reasonir_jax.train --config=tiny --workdir=/tmp/run \
      [--config.optim.lr=1e-5 --config.mesh.shape=(2,-1,1) ...]

A workdir holding a checkpoint resumes from it (same data order and RNG, so an interrupted run
ends with the same parameters as one that never stopped); with `checkpoint.local_dir` the hosts'
own local checkpoints are tried first (training/local_checkpoint.py). Otherwise the encoder
starts from the Hugging Face directory `--config.init_from`, or from random weights. Several
processes (TPU pod hosts, or `--coordinator_address/--num_processes/--process_id`) each read
their own share of the data; global arrays are built from process-local data.

The workdir, data globs and init_from may be remote (gs://BUCKET/...; see reasonir_jax/paths.py).
On SIGTERM (or a preemption sync point on a pod) the run checkpoints the step it reached and
exits with status 75, which the launcher takes as "preempted: restart" (training/preemption.py).

A step whose loss or gradient norm is not finite changes nothing (training/step.py) and is not
checkpointed; `train.max_consecutive_nonfinite` such steps in a row stop the run with an error
naming the steps and their batches' records (training/nonfinite.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Callable, Sequence

import ml_collections

log = logging.getLogger("reasonir_jax.train")

StepCallback = Callable[[int, object, dict], None]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Known flags plus the `--config.a.b=value` overrides, which ml_collections.config_flags
  applies to `--config` (reasonir_jax.configs.parse_config_flags)."""
  parser = argparse.ArgumentParser(prog="python -m reasonir_jax.train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="config file or name, e.g. tiny or reasonir_jax/configs/tiny.py")
  parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events, config.json")
  parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() and let JAX find its peers (TPU pods)")
  from reasonir_jax.configs import split_config_args
  overrides, rest = split_config_args(argv)
  args, unknown = parser.parse_known_args(rest)
  for item in unknown:
    parser.error(f"unrecognised argument {item!r} (config overrides look like --config.optim.lr=1e-5)")
  for item in overrides:
    if "=" not in item:
      parser.error(f"override {item!r} needs a value: {item}=VALUE")
  return args, overrides


def resolve_tokenizer(config: ml_collections.ConfigDict) -> str:
  """config.data.tokenizer, else the init_from directory's tokenizer, else the shipped sample one
  (a local path; reasonir_jax.tokenization.resolve_tokenizer)."""
  from reasonir_jax.tokenization import resolve_tokenizer as resolve
  return resolve(config.data.tokenizer, config.init_from)


def with_hf_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model takes its architecture from `config.init_from`'s
  config.json (dtypes, scan, remat and the recipe: causal, template, pooling stay); `config`
  itself is left as it is."""
  from reasonir_jax.hf import read_hf_config
  from reasonir_jax.model import ModelConfig
  keep = {k: config.model[k] for k in ("param_dtype", "dtype", "scan_layers", "remat_policy",
                                       "causal", "template", "pooling") if k in config.model}
  hf_cfg = ModelConfig.from_hf_dict(read_hf_config(config.init_from), **keep)
  adopted = config.copy_and_resolve_references()
  adopted.model.update({f.name: getattr(hf_cfg, f.name) for f in dataclasses.fields(hf_cfg)
                        if f.name in adopted.model})
  return adopted


def adopt_hf_model_config(config: ml_collections.ConfigDict) -> None:
  """Deprecated (one release): `with_hf_architecture`, written back into `config`."""
  config.model.update(with_hf_architecture(config).model)


def run(config: ml_collections.ConfigDict, workdir: str, *, step_callback: StepCallback | None = None,
        data_iterator=None):
  """Trains to `config.train.num_steps`; returns the final TrainState.

  `step_callback(step, state, metrics)` runs after every step (hooks for tests and profiling).
  `data_iterator` replaces the Grain pipeline (it must have get_state/set_state).
  """
  import jax
  from reasonir_jax import paths
  from reasonir_jax import sharding as shd
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training import flops as flops_lib
  from reasonir_jax.training import local_checkpoint
  from reasonir_jax.training import metrics as metrics_lib
  from reasonir_jax.training import nonfinite
  from reasonir_jax.training import preemption
  from reasonir_jax.training.step import build_trainer

  check_required(config)
  paths.check_writable(workdir)
  enable_compilation_cache(config, workdir)
  if config.init_from:
    if not paths.isdir(config.init_from):
      raise FileNotFoundError(f"config.init_from={config.init_from!r} is not a directory")
    config = with_hf_architecture(config)
  mesh = shd.make_mesh(config.mesh)
  trainer = build_trainer(config, mesh)
  tokenizer_path = resolve_tokenizer(config)
  check_vocab(config, tokenizer_path)
  ckpt_lib.save_config(workdir, config, tokenizer_path)
  manager = ckpt_lib.CheckpointManager(workdir, config.checkpoint)
  local = local_checkpoint.LocalCheckpointTier.from_config(workdir, config.checkpoint)

  if data_iterator is None:
    from reasonir_jax.data.pipeline import make_train_iterator
    # The trainer's batch layout, derived once: both sides agree on rows, shapes and checks.
    data_iterator = make_train_iterator(config, tokenizer_path, mesh, trainer.batch_sharding.spec,
                                        layout=trainer.layout)

  latest = manager.latest_step()
  # The local tier first: on the hosts that wrote it, it is at least as new and reads faster.
  from_local = local.restore(trainer.abstract_state(), latest) if local is not None else None
  if from_local is not None:
    state, data_state, local_step = from_local
    if data_state is not None:
      local_checkpoint.set_data_state(data_iterator, data_state)
    log.info("resumed from the local checkpoint in %s at step %d", local.directory, local_step)
  elif latest is not None:
    state, _ = manager.restore(trainer.abstract_state(), latest, data_iterator=data_iterator)
    log.info("resumed from %s at step %d", manager.directory, latest)
  elif config.init_from:
    from reasonir_jax.hf import load_hf
    model, _ = load_hf(config.init_from, mesh=mesh, rules=trainer.rules,
                       param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                       scan_layers=config.model.scan_layers, remat_policy=config.model.remat_policy)
    from flax import nnx
    _, params = nnx.split(model, nnx.Param)
    state = trainer.state_from_params(params)
    log.info("initialised from %s", config.init_from)
  else:
    state = trainer.init_state(int(config.seed))

  num_steps = int(config.train.num_steps)
  step = int(jax.device_get(state.step))
  # Every step shape compiled now, not when a batch of a new bucket first comes mid-run.
  compiled = (trainer.compile_steps(log=log.info)
              if config.train.get("precompile", False) and step < num_steps else None)
  writer = metrics_lib.MetricWriter(workdir)
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                           float(config.train.peak_flops_per_device))
  meter = metrics_lib.Throughput(jax.device_count(), peak)
  log_every = max(int(config.train.log_every), 1)
  group = trainer.group_size
  from reasonir_jax.model.attention import resolve_implementation
  attention = resolve_implementation(trainer.model_cfg.attention, mesh.devices.flat[0].platform)
  if writer.enabled:
    print(f"training {num_steps} steps from step {step} on {jax.device_count()} devices, "
          f"mesh {dict(mesh.shape)}, global batch {trainer.global_batch} x group {group}"
          + ("" if peak else " (device peak FLOP/s unknown: no MFU)"), flush=True)
  last_saved = latest
  guard = nonfinite.NonFiniteGuard(config.train.max_consecutive_nonfinite)
  watch = preemption.PreemptionWatch(manager).__enter__()
  step_starts = [time.monotonic()] * 2  # the last two steps' start times
  try:
    while step < num_steps:
      step_starts = [step_starts[1], time.monotonic()]
      data_before = data_iterator.get_state()
      batch = next(data_iterator)
      state, metrics = compiled_step(trainer, compiled, batch)(state, batch)
      step += 1
      # The step skipped a non-finite update (its state is the previous one with the counters
      # moved on); too many in a row stop the run here, before anything of theirs is saved.
      skipped = bool(jax.device_get(metrics["skipped_nonfinite"]))
      if skipped:
        guard.skipped(step, nonfinite.describe_rows(data_iterator, data_before,
                                                    data_iterator.get_state()),
                      float(metrics["loss"]), float(metrics["grad_norm"]))
      else:
        guard.finite()
      # Packed rows: the rows the step encodes, and only the attention within each text.
      meter.add(trainer.global_batch, *flops_lib.step_counts(
          trainer.model_cfg, batch, trainer.global_batch, group, trainer.chunk,
          trainer.packed_rows, attention))
      if not skipped and manager.save(state, data_iterator, step=step):
        last_saved = step
        if local is not None:
          local.restart_clock()
      elif not skipped and local is not None and local.due(step):
        local.save(state, local_checkpoint.data_state_of(data_iterator), step)
      if step % log_every == 0 or step == num_steps:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars.update(meter.report())
        scalars["skipped_nonfinite_steps"] = guard.total
        # Packing's fit counters (batches that overflowed the budget, texts and tokens cut).
        if hasattr(data_iterator, "stats"):
          scalars.update({k: float(v) for k, v in data_iterator.stats().items()
                          if k.startswith("packing_")})
        writer.write(step, scalars)
      if step_callback is not None:
        step_callback(step, state, metrics)
      if step < num_steps and watch.stop(step, earliest_notice=step_starts[0]):
        plan = manager.preemption_plan(watch.notice_time, saved_this_step=last_saved == step)
        if not plan.wait:
          manager.abandon()
          if local is not None:
            local.abandon()
          log.warning("preempted at step %d: %s; exiting at once with status %d (the restart "
                      "resumes from step %s)", step, plan.reason, preemption.EXIT_PREEMPTED,
                      last_committed(manager))
          raise preemption.Preempted(step, abandoned=manager.saving())
        if plan.save:
          manager.save(state, data_iterator, step=step, force=True)
        manager.wait()
        log.warning("preempted: checkpoint of step %d committed in %s (%s); exiting with status %d",
                    step, manager.directory, plan.reason, preemption.EXIT_PREEMPTED)
        raise preemption.Preempted(step)
    if last_saved != step:
      manager.save(state, data_iterator, step=step, force=True)
    manager.wait()
  finally:
    watch.__exit__()
    if local is not None:
      local.close()
    manager.close()
    writer.close()
    if hasattr(data_iterator, "close"):
      data_iterator.close()
  return state


def compiled_step(trainer, compiled: dict | None, batch: dict):
  """The step for this batch's shape: precompiled (config.train.precompile), else the jit."""
  if compiled is None:
    return trainer.train_step
  shape = (batch["query"]["input_ids"].shape[1], batch["passage"]["input_ids"].shape[1])
  if shape not in compiled:
    raise ValueError(f"a batch of row lengths {shape} is not one of the step shapes compiled "
                     f"before the run ({sorted(compiled)}, from config.data): the input pipeline "
                     "and training.step.step_shapes disagree")
  return compiled[shape]


def enable_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
  """With precompiling, compiled steps go to WORKDIR/jax_cache (unless a cache is set already),
  so a restarted run reads them back instead of compiling them again."""
  import jax
  from reasonir_jax import paths
  if not config.train.get("precompile", False) or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", paths.join(workdir, "jax_cache"))


def last_committed(manager) -> int | None:
  """The newest checkpoint that a restart can resume from (never a partial one)."""
  return manager.latest_step() if not manager.saving() else max(
      (s for s in manager.all_steps() if s != manager.latest_step()), default=None)


def check_required(config: ml_collections.ConfigDict) -> None:
  """Configs that set `train.require_explicit_data` (the 8B recipe) must name their training
  data and a tokenizer: the shipped sample and its 2048-token tokenizer are for CPU demos."""
  if not config.train.get("require_explicit_data", False):
    return
  missing = []
  if not config.data.sources or config.data.sources.strip() == "sample":
    missing.append("--config.data.sources=name=gs://BUCKET/glob-*.tfrecord[:weight],...")
  from reasonir_jax.tokenization import has_tokenizer
  if not config.data.tokenizer and not (config.init_from and has_tokenizer(config.init_from)):
    missing.append("--config.init_from=HF_MODEL_DIR (with its tokenizer) or "
                   "--config.data.tokenizer=TOKENIZER_DIR")
  if missing:
    raise ValueError("this config trains at scale and needs explicit data and a tokenizer; set "
                     + " and ".join(missing))


def check_vocab(config: ml_collections.ConfigDict, tokenizer_path: str) -> None:
  """A tokenizer with more ids than the embedding has rows would look up past its end (NaNs)."""
  from reasonir_jax.tokenization import load_tokenizer
  n = len(load_tokenizer(tokenizer_path))
  if n > int(config.model.vocab_size):
    raise ValueError(f"the tokenizer {tokenizer_path} has {n} tokens but "
                     f"config.model.vocab_size={config.model.vocab_size}: set "
                     "--config.model.vocab_size, or --config.data.tokenizer to the model's tokenizer")


def main(argv: Sequence[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  from reasonir_jax.scale import host_memory
  host_memory.configure_for_cpu()  # before JAX starts its CPU client
  from reasonir_jax.training import distributed
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         multihost=args.multihost)
  from reasonir_jax.configs import ConfigError, parse_config_flags
  try:
    config = parse_config_flags(args.config, overrides)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  try:
    check_required(config)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  from reasonir_jax.training.preemption import Preempted
  try:
    run(config, args.workdir)
  except Preempted as e:
    if not e.abandoned:
      raise
    # A save is still writing in background threads that the interpreter would wait for at
    # exit: end now, as the machine is about to (the partial step is never committed).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(e.code)


if __name__ == "__main__":
  main()
