"""MFU of our train step on one accelerator, beside HF PyTorch (SDPA flash attention) on the same
device and batch.

The model has Llama-3.1-8B's width (hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocab 128256)
and 4 layers; queries and passages are full 2048-token rows in bf16 matmuls with fp32 master
weights on both sides, the step being the contrastive step of `reasonir_jax.training.step`
(mean pooling, InfoNCE over the batch, AdamW + clipping). MFU divides the model FLOPs of
`reasonir_jax.training.flops` (bidirectional attention: all L x L pairs) by the device's peak
bf16 FLOP/s (`--peak_flops` where the device kind is unknown). The PyTorch reference is
`LlamaModel` made bidirectional under bf16 autocast, with SDPA restricted to the flash kernel on
CUDA (full rows need no mask, so flash applies). Timed rounds alternate; figures are medians.

  python bench/gpu_train_step.py [--batch 2] [--layers 4] [--length 2048] [--rounds 3] [--steps 5]
  python bench/gpu_train_step.py --tiny      # CPU-sized model and rows (keeps the script alive)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import interleaved_seconds  # noqa: E402  (bench/ is this script's directory)
from train_step import jax_ours, torch_train_model  # noqa: E402

WIDTH_8B = ["model.num_heads=32", "model.num_kv_heads=8", "model.head_dim=128",
            "model.hidden_size=4096", "model.intermediate_size=14336"]


def full_rows(batch: int, group: int, length: int, vocab: int, seed: int = 0) -> dict:
  """Host batch of unpadded rows (BOS + random ids), pooling over all but the first 3 tokens."""
  rng = np.random.default_rng(seed)

  def side(rows):
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    ids[:, 0] = 0
    mask = np.ones((rows, length), np.int32)
    pool = mask.copy()
    pool[:, :3] = 0
    return {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}

  return {"query": side(batch), "passage": side(batch * group)}


def torch_step(hf_dir, config, batch, device: str):
  """One HF PyTorch train step (returns its loss) on `device`: bf16 autocast when the config's
  compute dtype is bf16, flash SDPA on CUDA, no attention mask (every row is full)."""
  import contextlib
  import torch
  import torch.nn.functional as F

  model, opt = torch_train_model(hf_dir, config, device)
  o = config.optim
  tb = {k: {n: torch.from_numpy(a.astype(np.int64)).to(device) for n, a in v.items()}
        for k, v in batch.items()}
  g = config.data.group_size
  targets = torch.arange(tb["query"]["input_ids"].shape[0], device=device) * g
  bf16 = config.model.dtype == "bfloat16"

  def context():
    stack = contextlib.ExitStack()
    if bf16:
      stack.enter_context(torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16))
    if device.startswith("cuda"):
      from torch.nn.attention import SDPBackend, sdpa_kernel
      stack.enter_context(sdpa_kernel(SDPBackend.FLASH_ATTENTION))
    return stack

  def encode(side):
    hidden = model(input_ids=side["input_ids"]).last_hidden_state
    w = side["pool_mask"].float()[..., None]
    return F.normalize((hidden.float() * w).sum(1) / w.sum(1), dim=-1, eps=1e-6)

  def step():
    opt.zero_grad(set_to_none=True)
    with context():
      q, p = encode(tb["query"]), encode(tb["passage"])
      loss = F.cross_entropy((q @ p.T).float() / config.train.temperature, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()
    return loss.detach()

  return step


def timed_steps(step, n: int) -> None:
  """n PyTorch steps, then waits for the device (reading the last loss)."""
  losses = [step() for _ in range(n)]
  float(losses[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=2, help="queries per step (x group passages)")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--length", type=int, default=2048, help="tokens per query and passage row")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
  parser.add_argument("--attention", default="auto", help="config.model.attention for our step")
  parser.add_argument("--peak_flops", type=float, default=0.0,
                      help="peak bf16 FLOP/s of one device, where its kind is not known")
  parser.add_argument("--tiny", action="store_true",
                      help="reasonir_jax/configs/tiny.py's width, 128-token rows, fp32 (CPU; CI keeps it alive)")
  parser.add_argument("--no_torch", action="store_true", help="time our step only")
  args = parser.parse_args(argv)

  import jax
  from reasonir_jax.configs import load_config
  from reasonir_jax.training import flops, metrics

  overrides = [f"model.num_layers={args.layers}", f"train.global_batch_size={args.batch}",
               f"model.attention={args.attention}", "model.scan_layers=True",
               "model.remat_policy=none", "train.grad_cache_chunk=0", "mesh.shape=(1,1,1)"]
  if args.tiny:
    config = load_config("tiny", overrides)
    length = min(args.length, 128)
  else:
    config = load_config("llama3_8b", overrides + WIDTH_8B + ["model.dtype=bfloat16"])
    length = args.length
  config.data.query_max_length = config.data.passage_max_length = length
  device = jax.devices()[0]
  batch = full_rows(args.batch, config.data.group_size, length, config.model.vocab_size)
  torch_device = "cuda" if device.platform == "gpu" else "cpu"

  with tempfile.TemporaryDirectory() as hf_dir:
    jax_first, jax_run = jax_ours(config, batch, hf_dir)
    runs = {"jax": lambda: jax_run(args.steps)}
    torch_first = None
    if not args.no_torch:
      step = torch_step(hf_dir, config, batch, torch_device)
      torch_first = float(step())
      timed_steps(step, 1)  # warm-up
      runs["torch"] = lambda: timed_steps(step, args.steps)
  seconds = interleaved_seconds(runs, args.rounds)

  step_flops = flops.train_step_flops(config.model, args.batch, length, length,
                                      config.data.group_size)
  peak = metrics.peak_flops_per_device(device.device_kind, args.peak_flops)
  print(f"device {device.device_kind} ({device.platform}), jax {jax.__version__}; model width "
        f"{config.model.hidden_size}, {args.layers} layers, {config.model.dtype} matmuls; batch "
        f"{args.batch} queries x group {config.data.group_size}, rows of {length} tokens; "
        f"{args.rounds} rounds of {args.steps} steps")
  print(f"model FLOPs per step (bidirectional attention): {step_flops:.4g}")
  print(f"first-step loss: jax {jax_first:.6f}"
        + ("" if torch_first is None else f"  torch {torch_first:.6f}"))
  per_step = {name: float(np.median(s)) / args.steps for name, s in seconds.items()}
  for name, sec in per_step.items():
    mfu = f"{step_flops / sec / peak:.1%}" if peak else "n/a (device peak unknown: --peak_flops)"
    print(f"{name:6s}: {sec * 1e3:9.2f} ms/step  {step_flops / sec / 1e12:8.3f} TFLOP/s  MFU {mfu}")
  if "torch" in per_step:
    ratios = [t / j for j, t in zip(seconds["jax"], seconds["torch"])]
    print(f"ratio (jax / torch speed): {np.median(ratios):.2f}x median of rounds "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
  return per_step


if __name__ == "__main__":
  main()
