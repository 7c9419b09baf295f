"""AdamW with linear warmup then a constant (or cosine) learning rate, and global-norm clipping.

Defaults follow docs/reference.md section 2: lr 2e-5, 6% warmup, constant, betas 0.9/0.999, eps 1e-8,
no weight decay, clip 1.0. When weight decay is on, norms and embeddings are not decayed.
"""
from __future__ import annotations

import jax
import ml_collections
import optax

_NO_DECAY_NAMES = ("norm", "embed")


def warmup_steps(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> int:
  return int(round(optim_cfg.warmup_ratio * num_steps))


def make_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then constant or cosine decay to 0 at `num_steps`."""
  warm = warmup_steps(optim_cfg, num_steps)
  lr = float(optim_cfg.lr)
  if optim_cfg.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif optim_cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps=max(num_steps - warm, 1))
  else:
    raise ValueError(f"config.optim.schedule must be 'constant' or 'cosine', got {optim_cfg.schedule!r}")
  if warm == 0:
    return after
  # As the reference (transformers' constant schedule with warmup): lr * step / warm.
  warmup = optax.linear_schedule(0.0, lr, warm)
  return optax.join_schedules([warmup, after], [warm])


def decay_mask(params):
  """True for parameters that get weight decay: matrices other than norms and embeddings."""
  def keep(path, leaf) -> bool:
    names = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).lower()
    return leaf.ndim >= 2 and not any(n in names for n in _NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim_cfg: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optax transformation, learning-rate schedule)."""
  schedule = make_schedule(optim_cfg, num_steps)
  parts = []
  if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
  parts.append(optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2),
                           eps=float(optim_cfg.eps), weight_decay=float(optim_cfg.weight_decay),
                           mask=decay_mask if optim_cfg.weight_decay else None))
  return optax.chain(*parts), schedule
