"""Exports a training checkpoint as a Hugging Face `LlamaModel` directory.

  python -m reasonir_jax.export --workdir=DIR --out=HF_DIR [--step=N] [--dtype=bfloat16]

Reads `DIR/config.json` and the parameters of `DIR/checkpoints/<step>/` (latest by default),
and writes config.json, safetensors shards and the tokenizer the run trained with.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def export(workdir: str, out_dir: str, step: int | None = None, dtype: str | None = None) -> str:
  from reasonir_jax.hf import save_hf
  from reasonir_jax.training.checkpoint import load_params_for_export
  params, model_cfg, tokenizer_path = load_params_for_export(workdir, step)
  return save_hf(params, model_cfg, out_dir, tokenizer=tokenizer_path or None, dtype=dtype)


def main(argv: Sequence[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  parser = argparse.ArgumentParser(prog="python -m reasonir_jax.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the training workdir")
  parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                      help="saved tensor dtype (default: the parameters' dtype)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    out = export(args.workdir, args.out, args.step, args.dtype)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"exported {args.workdir} -> {out}")


if __name__ == "__main__":
  main()
