"""How long a checkpoint save holds up the train step, against the step itself, same run.

Trains a small config (about 14M parameters: 0.16 GB of parameters and Adam state in fp32) on the
sample data with a save every `--every` steps, asynchronous as the recipes run it, and prints the
median step time of steps without a save, of steps with one, the time `save()` blocked the loop
(the device-to-host copy; the write runs in the background), and each save's duration to commit.
The ratio stall / step is what a save costs the run; the commit time is what must fit a
preemption notice (checkpoint.preemption_grace_seconds).

  python bench/checkpoint_stall.py [--steps 30] [--every 6] [--sync]
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

  ends = []
  config = load_config("tiny", [*MODEL, f"train.num_steps={args.steps}",
                                f"checkpoint.every_steps={args.every}", "checkpoint.keep=2",
                                f"checkpoint.async_save={not args.sync}"])
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    def step_end(step, state, metrics):
      jax.block_until_ready(state)  # the step is dispatched asynchronously: time its end
      ends.append(time.perf_counter())
    train.run(config, workdir, step_callback=step_end)
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
    print(f"last save, start to commit: {commit * 1000:8.1f} ms")


if __name__ == "__main__":
  main()
