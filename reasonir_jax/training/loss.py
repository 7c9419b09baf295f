"""InfoNCE over the global batch: every query scores against every passage of every device.

Queries are [B, D], passages [B*G, D] (the passages of query i are rows i*G .. i*G+G-1, the
positive first). Logits are fp32 cosine / temperature with shape [B, B*G]; the target of query i
is passage i*G (docs/reference.md section 2). With per-row weights w (TrainingRow.weight) the loss
is the weighted mean over the global batch, sum_i w_i * nll_i / sum_i w_i; without them (or with all
ones, bitwise) it is the plain mean. The weights are constants: no gradient flows into them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def similarity_logits(q_emb_bd: jax.Array, p_emb_nd: jax.Array, temperature: float) -> jax.Array:
  """[B, B*G] fp32 logits; rows stay where the queries are sharded, passages are gathered."""
  q = q_emb_bd.astype(jnp.float32)
  p = p_emb_nd.astype(jnp.float32)
  return jnp.einsum("bd,nd->bn", q, p, precision=jax.lax.Precision.HIGHEST) / temperature


def contrastive_loss(q_emb_bd: jax.Array, p_emb_nd: jax.Array, *, temperature: float,
                     group_size: int, weights_b: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean (or `weights_b`-weighted mean) InfoNCE loss and batch metrics (top-1 accuracy, mean
  positive / negative cosine; these stay unweighted)."""
  b = q_emb_bd.shape[0]
  if p_emb_nd.shape[0] != b * group_size:
    raise ValueError(f"passages: expected {b} x group_size {group_size} = {b * group_size} rows, "
                     f"got {p_emb_nd.shape[0]}")
  logits_bn = similarity_logits(q_emb_bd, p_emb_nd, temperature)
  target_b = jnp.arange(b) * group_size
  log_probs_bn = jax.nn.log_softmax(logits_bn, axis=-1)
  pos_logp_b = jnp.take_along_axis(log_probs_bn, target_b[:, None], axis=-1)[:, 0]
  if weights_b is None:
    loss = -jnp.mean(pos_logp_b)
  else:
    w_b = jax.lax.stop_gradient(weights_b.astype(jnp.float32))
    total_w = jnp.sum(w_b)
    # sum(w * nll) / sum(w) written as mean(w * nll) * (B / sum(w)): with all-ones weights that is
    # mean(nll) * 1.0, reduced like the unweighted mean, so it stays bitwise equal on any mesh. A
    # batch whose weights are all 0 carries no signal: loss 0 and a zero gradient, not 0 / 0.
    scale = jnp.where(total_w > 0, b / jnp.where(total_w > 0, total_w, 1.0), 0.0)
    loss = -jnp.mean(w_b * pos_logp_b) * scale

  cos_bn = logits_bn * temperature
  is_pos_bn = jnp.arange(b * group_size)[None, :] == target_b[:, None]
  pos_sim = jnp.sum(jnp.where(is_pos_bn, cos_bn, 0.0)) / b
  neg_sim = jnp.sum(jnp.where(is_pos_bn, 0.0, cos_bn)) / max(b * (b * group_size - 1), 1)
  accuracy = jnp.mean((jnp.argmax(logits_bn, axis=-1) == target_b).astype(jnp.float32))
  metrics = dict(loss=loss, accuracy=accuracy, pos_sim=pos_sim, neg_sim=neg_sim)
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
