"""How long a checkpoint save holds up the train step, against the step itself, same run.

Trains a small config (about 14M parameters: 0.16 GB of parameters and Adam state in fp32) on the
sample data with a save every `--every` steps, asynchronous as the recipes run it, and prints the
median step time of steps without a save, of steps with one, the time `save()` blocked the loop
(the device-to-host copy; the write runs in the background), and each save's duration to commit.
The ratio stall / step is what a save costs the run; the commit time is what must fit a
preemption notice (checkpoint.preemption_grace_seconds).

With --local_every N the local tier (checkpoint.local_dir, training/local_checkpoint.py) also
saves every N steps; the run then prints its stall and write rate beside the persistent tier's,
and the time each tier takes to restore the final state: the rates docs/scaling.md projects a
preemption's cost from.

  python bench/checkpoint_stall.py [--steps 30] [--every 6] [--sync] [--local_every 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = ["model.num_layers=4", "model.hidden_size=512", "model.intermediate_size=1536",
         "model.num_heads=8", "model.num_kv_heads=4", "model.head_dim=64",
         "model.vocab_size=2048", "mesh.shape=(1,1,1)", "train.global_batch_size=8",
         "data.max_length=64", "data.query_max_length=64", "data.passage_max_length=64",
         "data.bucket_lengths=(64,)", "train.log_every=1000"]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--every", type=int, default=6)
  parser.add_argument("--sync", action="store_true", help="synchronous saves (async_save=False)")
  parser.add_argument("--local_every", type=int, default=0,
                      help="also save to the local tier every N steps (0: off)")
  args = parser.parse_args()
  if args.every < 2 or args.steps < 3 * args.every:
    parser.error("need --every >= 2 and --steps >= 3 x --every (a few saves, steps between)")
  import jax
  from reasonir_jax import train
  from reasonir_jax.configs import load_config
  from reasonir_jax.training import checkpoint as ckpt_lib

  blocking, waits, managers = [], [], []
  save = ckpt_lib.CheckpointManager.save

  def timed_save(self, *a, **k):
    saved = save(self, *a, **k)
    if saved:
      blocking.append(self.last_blocking_seconds)
      waits.append(self.last_wait_seconds)
      managers.append(self)
    return saved
  ckpt_lib.CheckpointManager.save = timed_save

  local_saves = time_local_tier()
  ends = []
  with tempfile.TemporaryDirectory() as workdir:
    local = [f"checkpoint.local_dir={os.path.join(workdir, 'local')}",
             f"checkpoint.local_every_steps={args.local_every}"] if args.local_every else []
    config = load_config("tiny", [*MODEL, f"train.num_steps={args.steps}",
                                  f"checkpoint.every_steps={args.every}", "checkpoint.keep=2",
                                  f"checkpoint.async_save={not args.sync}", *local])
    t0 = time.perf_counter()
    def step_end(step, state, metrics):
      jax.block_until_ready(state)  # the step is dispatched asynchronously: time its end
      ends.append(time.perf_counter())
    train.run(config, workdir, step_callback=step_end)
    restores = time_restores(config, workdir) if args.local_every else {}
    persistent_bytes = folder_bytes(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR, str(args.steps)))
  seconds = [b - a for a, b in zip([t0, *ends], ends)]
  # Step 1 compiles; the step after a save may also wait for the previous save's commit.
  with_save = [seconds[s - 1] for s in range(args.every, args.steps, args.every)]
  without = [seconds[s - 1] for s in range(2, args.steps) if s % args.every]
  stall = statistics.median(blocking[:-1] or blocking)  # the last one is the final save
  step = statistics.median(without)
  commit = managers[-1].last_save_seconds if managers else None
  print(f"{'async' if not args.sync else 'sync'} saves every {args.every} steps, {args.steps} steps")
  print(f"median step without a save: {step * 1000:8.1f} ms")
  print(f"median step with a save:    {statistics.median(with_save) * 1000:8.1f} ms")
  print(f"median time save() blocked: {stall * 1000:8.1f} ms  = {stall / step:.2f} x a step "
        "(device-to-host copy)")
  print(f"median wait for the previous save's commit: {statistics.median(waits) * 1000:8.1f} ms")
  if commit is not None:
    print(f"last save, start to commit: {commit * 1000:8.1f} ms  ({persistent_bytes / 1e9:.3f} GB: "
          f"{persistent_bytes / 1e9 / commit:.2f} GB/s)")
  if local_saves:
    stalls, writes, nbytes = zip(*local_saves)
    write = statistics.median(writes)
    print(f"local tier, every {args.local_every} steps ({len(local_saves)} saves):")
    print(f"  median time save() blocked: {statistics.median(stalls) * 1000:8.1f} ms  = "
          f"{statistics.median(stalls) / step:.2f} x a step (device-to-host copy)")
    print(f"  median write to commit:     {write * 1000:8.1f} ms  ({nbytes[0] / 1e9:.3f} GB: "
          f"{nbytes[0] / 1e9 / write:.2f} GB/s)")
  for tier, seconds in restores.items():
    print(f"restore from the {tier} tier: {seconds * 1000:8.1f} ms")


def time_local_tier() -> list[tuple[float, float, int]]:
  """Records (stall, write seconds, bytes) of every local-tier save of the run."""
  from reasonir_jax.training import local_checkpoint
  saves = []
  write = local_checkpoint.LocalCheckpointTier._write  # noqa: SLF001 - timing the background write

  def timed_write(self, manifest, buffers):
    start = time.perf_counter()
    write(self, manifest, buffers)
    saves.append((self.last_blocking_seconds, time.perf_counter() - start, manifest["bytes"]))
  local_checkpoint.LocalCheckpointTier._write = timed_write  # noqa: SLF001
  return saves


def time_restores(config, workdir: str) -> dict[str, float]:
  """Seconds each tier takes to restore the run's final state (one warm-up restore first)."""
  import jax
  from reasonir_jax import sharding as shd
  from reasonir_jax.training import checkpoint as ckpt_lib
  from reasonir_jax.training import local_checkpoint
  from reasonir_jax.training.step import build_trainer
  abstract = build_trainer(config, shd.make_mesh(config.mesh)).abstract_state()
  manager = ckpt_lib.CheckpointManager(workdir, config.checkpoint)
  tier = local_checkpoint.LocalCheckpointTier(workdir, config.checkpoint)
  out = {}
  for name, restore in (("persistent", lambda: manager.restore(abstract)[0]),
                        ("local", lambda: tier.restore(abstract, None)[0])):
    jax.block_until_ready(restore())
    start = time.perf_counter()
    jax.block_until_ready(restore())
    out[name] = time.perf_counter() - start
  manager.close()
  return out


def folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder)
             for f in files)


if __name__ == "__main__":
  main()
