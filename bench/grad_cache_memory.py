"""Peak memory of the compiled train step against the global batch, with and without GradCache.

Compiles (never runs) the step for global batch 16, 64 and 256 on a small config and reads
XLA's `memory_analysis()`: temporaries (activations, gradients in flight) plus arguments and
outputs (state, batch) minus the donated aliases. With GradCache (fixed chunk of 16 rows) the
peak should stay nearly flat; without it, it grows with the batch. `--packing` measures packed
rows (4 texts per row at 4x the length): GradCache then must not keep a [chunks, texts, D]
stack of the chunks' embeddings or of their gradient, so its peak stays nearly flat too.

  python bench/grad_cache_memory.py [--chunk 16] [--length 128] [--packing]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMALL = ["model.num_layers=4", "model.hidden_size=128", "model.intermediate_size=256",
         "model.num_heads=4", "model.num_kv_heads=2", "model.head_dim=32", "mesh.shape=(1,1,1)"]


PACKED = ["data.packing=True", "data.pack_queries_per_row=4", "data.pack_passages_per_row=4",
          "data.group_size=2"]


def peak_bytes(batch: int, chunk: int, length: int, packing: bool = False) -> tuple[int, int]:
  """(peak, temporaries) in bytes of the compiled step for one device."""
  from reasonir_jax import sharding as shd
  from reasonir_jax.configs import load_config
  from reasonir_jax.training.step import build_trainer
  overrides = [*SMALL, f"train.global_batch_size={batch}", f"train.grad_cache_chunk={chunk}"]
  if packing:  # rows of 4 texts: the same tokens as the padded batch
    overrides += [*PACKED, f"data.query_max_length={length}", f"data.passage_max_length={length}"]
    length *= 4
  cfg = load_config("tiny", overrides)
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
  parser.add_argument("--packing", action="store_true", help="packed rows (4 texts per row)")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  rows = {}
  for mode, chunk in (("grad_cache", args.chunk), ("full_batch", 0)):
    for b in batches:
      rows[mode, b] = peak_bytes(b, chunk, args.length, args.packing)
      peak, temp = rows[mode, b]
      print(f"{mode:10s} batch {b:4d}: peak {peak / 2**20:8.2f} MiB  (temporaries {temp / 2**20:8.2f} MiB)",
            flush=True)
  for mode in ("grad_cache", "full_batch"):
    base = rows[mode, batches[0]][0]
    ratios = "  ".join(f"{b}: {rows[mode, b][0] / base:.2f}x" for b in batches)
    print(f"{mode:10s} peak relative to batch {batches[0]}: {ratios}")


if __name__ == "__main__":
  main()
