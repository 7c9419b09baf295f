"""Peak memory of the compiled train step against the global batch, with and without GradCache.

Compiles (never runs) the step for global batch 16, 64 and 256 on a small config and reads
XLA's `memory_analysis()`: temporaries (activations, gradients in flight) plus arguments and
outputs (state, batch) minus the donated aliases. With GradCache (fixed chunk of 16 rows) the
peak should stay nearly flat; without it, it grows with the batch.

  python bench/grad_cache_memory.py [--chunk 16] [--length 128]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = ["model.num_layers=4", "model.hidden_size=128", "model.intermediate_size=256",
         "model.num_heads=4", "model.num_kv_heads=2", "model.head_dim=32", "mesh.shape=(1,1,1)"]


def peak_bytes(batch: int, chunk: int, length: int) -> tuple[int, int]:
  """(peak, temporaries) in bytes of the compiled step for one device."""
  from reasonir_jax import sharding as shd
  from reasonir_jax.config import load_config
  from reasonir_jax.training.step import build_trainer
  cfg = load_config("configs/tiny.py", [*SMALL, f"train.global_batch_size={batch}",
                                        f"train.grad_cache_chunk={chunk}"])
  trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
  compiled = trainer.train_step.lower(trainer.abstract_state(),
                                      trainer.abstract_batch(length, length)).compile()
  m = compiled.memory_analysis()
  peak = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes)
  return peak, m.temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--chunk", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--batches", default="16,64,256")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  rows = {}
  for mode, chunk in (("grad_cache", args.chunk), ("full_batch", 0)):
    for b in batches:
      rows[mode, b] = peak_bytes(b, chunk, args.length)
      peak, temp = rows[mode, b]
      print(f"{mode:10s} batch {b:4d}: peak {peak / 2**20:8.2f} MiB  (temporaries {temp / 2**20:8.2f} MiB)",
            flush=True)
  for mode in ("grad_cache", "full_batch"):
    base = rows[mode, batches[0]][0]
    ratios = "  ".join(f"{b}: {rows[mode, b][0] / base:.2f}x" for b in batches)
    print(f"{mode:10s} peak relative to batch {batches[0]}: {ratios}")


if __name__ == "__main__":
  main()
