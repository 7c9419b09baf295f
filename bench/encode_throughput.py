"""Tokens/s of `Encoder.encode` against the transformers PyTorch model (bidirectional), fp32 CPU.

Both encode the same texts with the same weights (a random mid-size Llama built here: 4 layers,
width 512, GQA 8/2) and the same tokenization; each is timed after a warm-up, over a few
interleaved repeats, in the same run. Prints both rates and the ratio ours / PyTorch per case:

  uniform: `batch` texts of exactly `length` tokens (one bucket: no padding anywhere).
  mixed:   4 x `batch` texts whose lengths are drawn uniformly from 0.55 to 0.8 x `length`
           (never a bucket size). PyTorch pads each batch of `batch` texts, in the caller's
           order, to its longest; ours packs (the default) and, for comparison, pads
           (packing=False: sorted by length, padded to bucket lengths).

Useful tokens/s counts the texts' tokens only (never padding).

Ceiling: the projection matmuls of one layer (q, k, v, o, gate, up, down) on 4096 tokens, timed
alone in XLA and in PyTorch; the useful tokens' projection FLOPs at XLA's rate, with attention,
norms and everything else free, bound the fastest any JAX encode can be on this machine. Its
ratio to the measured PyTorch time is the best ratio this machine allows (a target above it
needs faster XLA matmuls, not a different encode plan).

    python bench/encode_throughput.py [--batch 16] [--length 256] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

from timing import interleaved_seconds


def build_checkpoint(out_dir: str, seed: int = 0):
  import torch
  import transformers
  from reasonir_jax.hf.torch_reference import make_bidirectional
  from reasonir_jax.tokenization import train_tokenizer

  words = ("protein cell energy light market rate earth plate code search proof theorem integral "
           "policy inflation volcano enzyme graph matrix vector orbit gene water carbon").split()
  corpus = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(200)]
  tokenizer = train_tokenizer(corpus, vocab_size=512, out_dir=out_dir)
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
      num_attention_heads=8, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
      max_position_embeddings=131072, bos_token_id=0, eos_token_id=1, pad_token_id=2,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
  model = make_bidirectional(transformers.LlamaModel(config).eval())
  model.save_pretrained(out_dir)
  return model, tokenizer, words


def projection_shapes(config) -> list[tuple[int, int]]:
  """(in, out) of each projection matmul of one layer (q, k, v, o, gate, up, down)."""
  d, f, h = config.hidden_size, config.intermediate_size, config.head_dim
  n, k = config.num_attention_heads, config.num_key_value_heads
  return [(d, n * h), (d, k * h), (d, k * h), (n * h, d), (d, f), (d, f), (f, d)]


def matmul_rates(shapes, repeats: int, tokens: int = 4096) -> dict[str, float]:
  """GFLOP/s of one layer's projection matmuls on `tokens` rows, XLA (jit) and PyTorch."""
  import jax
  import numpy as np
  import torch
  flops = sum(2 * tokens * i * o for i, o in shapes)
  rng = np.random.RandomState(0)
  xs = [rng.randn(tokens, i).astype(np.float32) for i, _ in shapes]
  ws = [rng.randn(i, o).astype(np.float32) for i, o in shapes]
  jx, jw = [jax.numpy.asarray(a) for a in xs], [jax.numpy.asarray(a) for a in ws]
  layer = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws)])
  tx, tw = [torch.from_numpy(a) for a in xs], [torch.from_numpy(a) for a in ws]
  fns = {"xla": lambda: jax.block_until_ready(layer(jx, jw)),
         "torch": lambda: [x @ w for x, w in zip(tx, tw)]}
  for fn in fns.values():
    fn()
  seconds = interleaved_seconds(fns, max(3, 3 * repeats))
  return {k: flops / min(v) / 1e9 for k, v in seconds.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()

  import numpy as np
  import torch
  torch.set_num_threads(args.threads)
  from reasonir_jax import Encoder
  from reasonir_jax.hf.torch_reference import encode as torch_encode

  with tempfile.TemporaryDirectory() as d:
    torch_model, tokenizer, words = build_checkpoint(d)
    rng = np.random.RandomState(0)
    instruction = "Given a biology post, retrieve relevant passages that help answer the post"
    enc = Encoder.from_pretrained(d, dtype="float32", show_progress=False)
    prefix_len = len(enc.prompt_tokenizer.prefix_ids(instruction))
    # One token per word with this tokenizer: a text of m words is prefix_len + m tokens.
    uniform = [" ".join(rng.choice(words, size=4 * args.length)) for _ in range(args.batch)]
    lo, hi = int(0.55 * args.length), int(0.8 * args.length)
    if lo <= prefix_len:
      parser.error(f"--length {args.length} is too short: the shortest mixed text (0.55 x length "
                   f"= {lo} tokens) must be longer than the {prefix_len}-token prompt prefix")
    mixed_lengths = rng.randint(lo, hi + 1, size=4 * args.batch)
    mixed = [" ".join(rng.choice(words, size=n - prefix_len)) for n in mixed_lengths]
    shapes = projection_shapes(torch_model.config)
    rates = matmul_rates(shapes, args.repeats)
    dense_flops_per_token = torch_model.config.num_hidden_layers * sum(2 * i * o for i, o in shapes)
    print(f"config: 4 layers, width 512, GQA 8/2, fp32, batch {args.batch}, max length "
          f"{args.length}, torch threads {args.threads}, median of {args.repeats}")
    for name, texts in (("uniform", uniform), ("mixed", mixed)):
      tokens = sum(len(ids) for ids, _ in enc.prompt_tokenizer.encode(texts, instruction,
                                                                      args.length))
      fns = {
          "jax packed": lambda t=texts: enc.encode(t, instruction=instruction,
                                                   batch_size=args.batch, max_length=args.length),
          "jax padded": lambda t=texts: enc.encode(t, instruction=instruction, packing=False,
                                                   batch_size=args.batch, max_length=args.length),
          "torch": lambda t=texts: np.concatenate([
              torch_encode(torch_model, tokenizer, t[s: s + args.batch], instruction,
                           max_length=args.length).numpy()
              for s in range(0, len(t), args.batch)]),
      }
      ref = fns["torch"]()  # also the warm-up (JAX compiles)
      diffs = {k: float(np.abs(fn() - ref).max()) for k, fn in fns.items() if k != "torch"}
      seconds = interleaved_seconds(fns, args.repeats)
      t = {k: statistics.median(v) for k, v in seconds.items()}
      print(f"[{name}] {len(texts)} texts, {tokens} useful tokens; max |jax - torch| "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
      for k in fns:
        print(f"[{name}] {k:11s}: {tokens / t[k]:10.0f} useful tokens/s ({t[k] * 1e3:.1f} ms)")
      for k in ("jax packed", "jax padded"):
        print(f"[{name}] ratio {k} / torch: {t['torch'] / t[k]:.2f}x")
      floor = tokens * dense_flops_per_token / (rates["xla"] * 1e9)
      print(f"[{name}] ceiling: useful projection FLOPs at XLA's matmul rate, all else free: "
            f"{floor * 1e3:.1f} ms = {t['torch'] / floor:.2f}x torch")
    print(f"projection matmuls, 4096 tokens: XLA {rates['xla']:.0f} GFLOP/s, PyTorch "
          f"{rates['torch']:.0f} GFLOP/s ({rates['xla'] / rates['torch']:.2f}x)")


if __name__ == "__main__":
  main()
