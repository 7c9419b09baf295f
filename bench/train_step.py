"""Train-step throughput: our jitted JAX step against a PyTorch reference, same run, same CPU.

The reference is transformers' `LlamaModel` made bidirectional (is_causal cleared on every layer
and a 4-D key-padding mask passed; docs/reference.md section 10), with the same mean pooling over the
text tokens, fp32 InfoNCE over the global batch and AdamW + clipping. Both start from the same
weights (ours exported with `save_hf`), and the first-step losses are printed side by side.
Timed rounds of the two alternate; the ratio is the median over rounds. Like CPU training runs,
the process first sets glibc to keep freed blocks (`--malloc default` measures without it).

  python bench/train_step.py [--rounds 5] [--steps 10] [--batch 16] [--malloc reuse|default]

With --packing, it races our step on packed inputs (config.data.packing=True) against our step on
the same batch padded (as the input pipeline pads: each side to its bucket), on a realistic
length mix: queries of 16-64 tokens, passages 60% medium (64-160) and 40% long (256-512). It
prints useful (non-padding) tokens/s of each and the ratio packed / padded.

  python bench/train_step.py --packing [--rounds 5] [--steps 3] [--batch 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timing import interleaved_seconds  # noqa: E402  (bench/ is this script's directory)


def torch_train_model(hf_dir, config, device: str = "cpu"):
  """(model, AdamW): transformers' LlamaModel from hf_dir, bidirectional (is_causal cleared on
  every layer), fp32 weights in train mode, with the config's optimizer settings."""
  import torch
  from transformers import LlamaModel

  torch.manual_seed(0)
  model = LlamaModel.from_pretrained(hf_dir, torch_dtype=torch.float32,
                                     attn_implementation="sdpa").to(device)
  for layer in model.layers:
    layer.self_attn.is_causal = False
  model.train()
  o = config.optim
  return model, torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                                  weight_decay=o.weight_decay)


def torch_reference(hf_dir, config, batch):
  """(first-step loss, run(n)): run takes n reference steps and waits for them."""
  import torch
  import torch.nn.functional as F

  model, opt = torch_train_model(hf_dir, config)
  o = config.optim
  warm = max(int(round(o.warmup_ratio * config.train.num_steps)), 1)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warm, 1.0))
  tb = {k: {n: torch.from_numpy(a.astype(np.int64)) for n, a in v.items()} for k, v in batch.items()}
  g = config.data.group_size
  targets = torch.arange(tb["query"]["input_ids"].shape[0]) * g

  def encode(side):
    mask = side["attention_mask"].bool()
    mask4 = mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
    hidden = model(input_ids=side["input_ids"], attention_mask=mask4).last_hidden_state
    w = side["pool_mask"].float()[..., None]
    emb = (hidden.float() * w).sum(1) / w.sum(1).clamp(min=1.0)
    return F.normalize(emb, dim=-1, eps=1e-6)

  # Bidirectional check: token 0 must see a change in the last token.
  with torch.no_grad():
    ids = tb["query"]["input_ids"][:1].clone()
    full = torch.ones_like(ids, dtype=torch.bool)[:, None, None, :].expand(-1, 1, ids.shape[1], -1)
    a = model(input_ids=ids, attention_mask=full).last_hidden_state[0, 0]
    ids[0, -1] = (ids[0, -1] + 1) % 100 + 3
    b = model(input_ids=ids, attention_mask=full).last_hidden_state[0, 0]
    assert not torch.allclose(a, b), "the PyTorch reference is not bidirectional"

  def step():
    opt.zero_grad(set_to_none=True)
    q, p = encode(tb["query"]), encode(tb["passage"])
    loss = F.cross_entropy((q @ p.T) / config.train.temperature, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()
    sched.step()
    return loss.detach()

  first = float(step())
  step()  # warm-up

  def run(n):
    for _ in range(n):
      loss = step()
    float(loss)

  return first, run


def jax_ours(config, batch, hf_dir):
  """(first-step loss, run(n)) for our jitted step; also writes the start weights to hf_dir."""
  import jax
  from flax import nnx
  from reasonir_jax import sharding as shd
  from reasonir_jax.hf import save_hf
  from reasonir_jax.training.step import build_trainer

  trainer = build_trainer(config, shd.make_mesh(config.mesh))
  state = trainer.init_state(0)
  save_hf(nnx.merge(trainer.graphdef, jax.device_get(state.params)), trainer.model_cfg, hf_dir,
          show_progress=False)
  dev_batch = trainer.place_batch(batch)
  state, m = trainer.train_step(state, dev_batch)
  first = float(m["loss"])
  state, m = trainer.train_step(state, dev_batch)  # warm-up
  jax.block_until_ready(state)
  holder = [state]

  def run(n):
    for _ in range(n):
      holder[0], _ = trainer.train_step(holder[0], dev_batch)
    jax.block_until_ready(holder[0])

  return first, run


def realistic_batch(batch: int, group: int, vocab: int, seed: int = 0, prefix_len: int = 3):
  """Padded host batch of the realistic mix above (query rows 64, passage rows 512 long)."""
  rng = np.random.default_rng(seed)
  q_len = rng.integers(16, 65, size=batch)
  long = rng.random(batch * group) < 0.4
  p_len = np.where(long, rng.integers(256, 513, size=batch * group),
                   rng.integers(64, 161, size=batch * group))

  def side(lens, length):
    ids = rng.integers(3, vocab, size=(len(lens), length)).astype(np.int32)
    ids[:, 0] = 0
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 2).astype(np.int32)
    pool = mask.copy()
    pool[:, :prefix_len] = 0
    return {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}

  return {"query": side(q_len, 64), "passage": side(p_len, 512)}


def packing_main(args):
  """Our step on packed vs padded inputs of the same realistic batch (see the module docstring)."""
  import jax
  from reasonir_jax import sharding as shd
  from reasonir_jax.configs import load_config
  from reasonir_jax.packing import pack_padded
  from reasonir_jax.training.step import build_trainer

  base = [f"train.global_batch_size={args.batch}", "mesh.shape=(1,1,1)",
          "data.query_max_length=128", "data.passage_max_length=512"]
  padded_cfg = load_config(args.config, base)
  packed_cfg = load_config(args.config, base + ["data.packing=True", "data.pack_queries_per_row=2",
                                                "data.pack_passages_per_row=2"])
  for cfg in (padded_cfg, packed_cfg):
    cfg.mesh.shape = (jax.device_count(), 1, 1)
  padded = realistic_batch(args.batch, padded_cfg.data.group_size, padded_cfg.model.vocab_size)
  useful = sum(int(padded[s]["attention_mask"].sum()) for s in padded)
  runs, shapes = {}, {}
  for name, cfg in (("padded", padded_cfg), ("packed", packed_cfg)):
    trainer = build_trainer(cfg, shd.make_mesh(cfg.mesh))
    batch = padded
    if trainer.packing:
      batch = {s: pack_padded(padded[s], trainer.packed_rows[s],
                              cfg.data[f"{s}_max_length"]) for s in padded}
    shapes[name] = {s: batch[s]["input_ids"].shape for s in batch}
    state = trainer.init_state(0)
    dev_batch = trainer.place_batch(batch)
    state, m = trainer.train_step(state, dev_batch)
    state, m = trainer.train_step(state, dev_batch)  # warm-up
    jax.block_until_ready(state)
    holder = [state, trainer, dev_batch]
    runs[name] = (float(m["loss"]), holder)

  def runner(holder):
    def run():
      for _ in range(args.steps):
        holder[0], _ = holder[1].train_step(holder[0], holder[2])
      jax.block_until_ready(holder[0])
    return run

  seconds = interleaved_seconds({k: runner(h) for k, (_, h) in runs.items()}, args.rounds)
  rates = {k: [useful * args.steps / s for s in v] for k, v in seconds.items()}
  print(f"config {args.config}: batch {args.batch} x group {padded_cfg.data.group_size}, "
        f"{useful} useful tokens per step, {jax.device_count()} JAX device(s), {args.rounds} "
        f"rounds of {args.steps} steps")
  for name in ("padded", "packed"):
    slots = sum(int(np.prod(v)) for v in shapes[name].values())
    print(f"{name}: rows {shapes[name]} ({useful / slots:.0%} of the slots are useful); "
          f"{np.median(rates[name]):9.1f} useful tokens/s median; step-2 loss {runs[name][0]:.6f}")
  ratios = [p / q for p, q in zip(rates["packed"], rates["padded"])]
  print(f"ratio (packed / padded useful tokens/s): {np.median(ratios):.2f}x median of rounds "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="reasonir_jax/configs/tiny.py")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds, JAX and PyTorch alternating")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--query_len", type=int, default=64)
  parser.add_argument("--passage_len", type=int, default=128)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                      help="reuse: reasonir_jax.scale.host_memory.keep_freed_blocks(), as CPU training runs")
  parser.add_argument("--packing", action="store_true",
                      help="race our step on packed vs padded inputs (no PyTorch)")
  args = parser.parse_args()

  from reasonir_jax.scale import host_memory
  # Before JAX (and PyTorch's thread pool) start: both then allocate under the same policy.
  reuse = args.malloc == "reuse" and host_memory.keep_freed_blocks()
  malloc_note = "glibc keeps freed blocks" if reuse else "default malloc"
  if args.packing:
    return packing_main(args)
  import torch
  torch.set_num_threads(args.threads)
  from reasonir_jax.configs import load_config
  from reasonir_jax.training.synthetic import random_batch
  config = load_config(args.config, [f"train.global_batch_size={args.batch}", "mesh.shape=(1,1,1)"])
  import jax
  config.mesh.shape = (jax.device_count(), 1, 1)
  batch = random_batch(args.batch, config.data.group_size, args.query_len, args.passage_len,
                       config.model.vocab_size)
  with tempfile.TemporaryDirectory() as hf_dir:
    jax_first, jax_run = jax_ours(config, batch, hf_dir)
    torch_first, torch_run = torch_reference(hf_dir, config, batch)
  seconds = interleaved_seconds({"jax": lambda: jax_run(args.steps),
                                 "torch": lambda: torch_run(args.steps)}, args.rounds)
  rates = {name: [args.steps / s for s in secs] for name, secs in seconds.items()}
  ratios = [j / t for j, t in zip(rates["jax"], rates["torch"])]
  ex = args.batch
  print(f"config {args.config}: batch {args.batch} x group {config.data.group_size}, "
        f"query {args.query_len} / passage {args.passage_len} tokens, {jax.device_count()} JAX device(s), "
        f"torch threads {args.threads}, {args.rounds} rounds of {args.steps} steps, {malloc_note}")
  print(f"first-step loss: jax {jax_first:.6f}  torch {torch_first:.6f}")
  for name in ("jax", "torch"):
    sps = float(np.median(rates[name]))
    print(f"{name:6s}: {sps:8.2f} steps/s  {sps * ex:9.1f} examples/s  (median; rounds "
          f"{' '.join(f'{r:.2f}' for r in rates[name])})")
  print(f"ratio (jax / torch): {np.median(ratios):.2f}x median of rounds "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")


if __name__ == "__main__":
  main()
