"""Exports a training checkpoint as a Hugging Face directory that transformers and
sentence-transformers load as-is.

  python -m reasonir_jax.export --workdir=DIR --out=HF_DIR [--step=N] [--dtype=bfloat16] \
      [--prompt biology="Given a biology post, retrieve relevant passages that help answer the post"]

Reads `DIR/config.json` and the parameters of `DIR/checkpoints/<step>/` (latest by default),
sharded over every device (on a pod, run it on every host: each restores its own blocks, the
tensors are gathered one at a time and process 0 writes), and writes config.json, safetensors
shards, the tokenizer the run trained with and the sentence-transformers files, with a prompt
for documents and one per `--prompt NAME=INSTRUCTION`. Paths may be remote (gs://...).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def export(workdir: str, out_dir: str, step: int | None = None, dtype: str | None = None,
           prompts: dict[str, str] | None = None, max_length: int = 2048) -> str:
  import ml_collections
  from reasonir_jax import sharding as shd
  from reasonir_jax.encoder import Encoder
  # FSDP over every device: each holds 1/N of every tensor, whatever mesh trained the run.
  mesh = shd.make_mesh(ml_collections.ConfigDict({"shape": (1, -1, 1),
                                                  "axes": ("data", "fsdp", "tensor")}))
  encoder = Encoder.from_pretrained(workdir, dtype=None, mesh=mesh, step=step)
  return encoder.save_pretrained(out_dir, dtype=dtype, prompts=prompts, max_length=max_length)


def parse_prompt(text: str) -> tuple[str, str]:
  name, sep, instruction = text.partition("=")
  if not sep or not name.strip() or not instruction.strip():
    raise argparse.ArgumentTypeError(f"--prompt {text!r}: expected NAME=INSTRUCTION")
  return name.strip(), instruction.strip()


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
  parser.add_argument("--prompt", type=parse_prompt, action="append", default=[],
                      metavar="NAME=INSTRUCTION",
                      help="a sentence-transformers prompt for queries with this instruction "
                           "(repeatable; documents always get the prompt 'document')")
  parser.add_argument("--max-length", type=int, default=2048,
                      help="sentence-transformers max_seq_length")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from reasonir_jax.training import distributed
  distributed.initialize()  # several hosts when launched as a pod job; nothing otherwise
  try:
    out = export(args.workdir, args.out, args.step, args.dtype, dict(args.prompt),
                 args.max_length)
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"exported {args.workdir} -> {out}")


if __name__ == "__main__":
  main()
