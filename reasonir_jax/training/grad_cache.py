"""Loss and parameter gradients of the contrastive loss, full batch or with GradCache.

GradCache (Gao et al. 2021) fits a large contrastive batch in memory: (1) encode every chunk
of the batch without keeping activations, (2) take the gradient of the loss with respect to the
embeddings only, (3) re-encode chunk by chunk and pull those embedding gradients back to the
parameters through a VJP, summing over chunks. The result equals the full-batch gradient; the
peak activation memory is that of one chunk.

Chunks stay sharded over the data devices. A naive reshape of a sharded batch [B, L] into
[C, B/C, L] puts whole chunks on single devices (XLA then all-to-alls or replicates). Instead
chunk c is {sub-block c of every device's local block}: [B] -> [D, C, B/(D*C)] -> [C, D, B/(D*C)]
-> [C, B/C]. Each device keeps exactly its own rows, so no data moves, and `unchunk_rows` puts
the embeddings back in the original row order before the loss.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasonir_jax.data.layout import PER_ROW_FIELDS

# encode_fn(params, inputs, num_texts) -> emb [num_texts, D] fp32, where inputs is one side's
# dict of [rows, L] arrays: padded (input_ids, attention_mask, pool_mask: one text per row) or
# packed (input_ids, segment_ids, positions, pool_ids: several texts per row, reasonir_jax.packing).
EncodeFn = Callable[[Any, dict, int], jax.Array]
# loss_fn(q_emb_bd, p_emb_nd) -> (loss, metrics).
LossFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]]


def is_packed(inputs: dict) -> bool:
  return "pool_ids" in inputs


def _texts(inputs: dict, num_texts: dict | None, side: str) -> int:
  """Texts of one side: one per row when padded; packed rows need num_texts[side]."""
  if num_texts is not None:
    return int(num_texts[side])
  if is_packed(inputs):
    raise ValueError(f"packed {side} inputs need num_texts[{side!r}]")
  return int(inputs["input_ids"].shape[0])


def check_chunking(num_rows: int, chunk_size: int, num_shards: int, what: str = "batch") -> int:
  """The number of chunks; a clear error when the rows cannot be split evenly."""
  if chunk_size <= 0:
    raise ValueError(f"config.train.grad_cache_chunk must be > 0 to chunk, got {chunk_size}")
  if chunk_size % num_shards:
    raise ValueError(f"config.train.grad_cache_chunk={chunk_size} must be a multiple of the "
                     f"{num_shards} data-parallel devices (each chunk is spread over all of them)")
  if num_rows % chunk_size:
    raise ValueError(f"config.train.grad_cache_chunk={chunk_size} must divide the {what} rows "
                     f"({num_rows})")
  return num_rows // chunk_size


def _constrain(x: jax.Array, mesh: Mesh | None, spec: P) -> jax.Array:
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def chunk_rows(x: jax.Array, num_chunks: int, num_shards: int, mesh: Mesh | None = None,
               batch_axes: Sequence[str] | str | None = None) -> jax.Array:
  """[B, ...] -> [C, B/C, ...] where chunk c holds sub-block c of every device's block of rows."""
  b, rest = x.shape[0], x.shape[1:]
  per = b // (num_shards * num_chunks)
  x_dcr = x.reshape(num_shards, num_chunks, per, *rest)
  x_cdr = jnp.swapaxes(x_dcr, 0, 1)
  x_c = x_cdr.reshape(num_chunks, num_shards * per, *rest)
  return _constrain(x_c, mesh, P(None, batch_axes))


def unchunk_rows(x_c: jax.Array, num_shards: int, mesh: Mesh | None = None,
                 batch_axes: Sequence[str] | str | None = None) -> jax.Array:
  """The inverse of `chunk_rows`: [C, B/C, ...] -> [B, ...] in the original row order."""
  c, rows, rest = x_c.shape[0], x_c.shape[1], x_c.shape[2:]
  per = rows // num_shards
  x_cdr = x_c.reshape(c, num_shards, per, *rest)
  x_dcr = jnp.swapaxes(x_cdr, 0, 1)
  x = x_dcr.reshape(c * rows, *rest)
  return _constrain(x, mesh, P(batch_axes))


def full_batch_value_and_grad(encode_fn: EncodeFn, loss_fn: LossFn, params, batch: dict,
                              num_texts: dict | None = None):
  """(loss, metrics), grads with one backward over the whole batch (activations all kept)."""
  n_q = _texts(batch["query"], num_texts, "query")
  n_p = _texts(batch["passage"], num_texts, "passage")

  def total(p):
    return loss_fn(encode_fn(p, batch["query"], n_q), encode_fn(p, batch["passage"], n_p))
  return jax.value_and_grad(total, has_aux=True)(params)


def grad_cache_value_and_grad(encode_fn: EncodeFn, loss_fn: LossFn, params, batch: dict, *,
                              chunk_size: int, num_shards: int, mesh: Mesh | None = None,
                              batch_axes: Sequence[str] | str | None = None,
                              num_texts: dict | None = None):
  """Same result as `full_batch_value_and_grad`, holding the activations of one chunk at a time.

  chunk_size counts texts. Padded inputs are chunked by rows (one text each); packed rows are
  split into as many chunks as the padded batch would have, and each chunk's encode yields all
  num_texts embeddings, zero for the texts it does not hold (every text lies in exactly one row),
  so the chunks' embeddings sum to the full batch's. That sum is kept in the scan's carry, and
  every chunk's backward reads the one [N, D] embedding gradient: no [C, N, D] array is built.
  """
  def split(inputs: dict, side: str):
    texts = _texts(inputs, num_texts, side)
    n = check_chunking(texts, chunk_size, num_shards, side)
    rows = inputs["input_ids"].shape[0]
    if is_packed(inputs) and rows % (n * num_shards):
      raise ValueError(f"packed {side} rows ({rows}) must split into {n} GradCache chunks "
                       f"(config.train.grad_cache_chunk={chunk_size}) over the {num_shards} "
                       f"data-parallel devices; change config.data.{PER_ROW_FIELDS[side]}")
    return {k: chunk_rows(v, n, num_shards, mesh, batch_axes) for k, v in inputs.items()}, texts

  def encode_no_grad(chunks: dict, texts: int) -> jax.Array:
    if is_packed(chunks):
      def add_chunk(acc, chunk):
        return acc + encode_fn(params, chunk, texts), None
      first = jax.tree.map(lambda x: x[0], chunks)
      out = jax.eval_shape(lambda c: encode_fn(params, c, texts), first)
      emb, _ = jax.lax.scan(add_chunk, jnp.zeros(out.shape, out.dtype), chunks)
      return jax.lax.stop_gradient(emb)

    rows = chunks["input_ids"].shape[1]

    def encode_chunk(carry, chunk):
      return carry, encode_fn(params, chunk, rows)
    _, emb_c = jax.lax.scan(encode_chunk, None, chunks)
    return unchunk_rows(jax.lax.stop_gradient(emb_c), num_shards, mesh, batch_axes)

  q_chunks, n_q = split(batch["query"], "query")
  p_chunks, n_p = split(batch["passage"], "passage")
  q_emb = encode_no_grad(q_chunks, n_q)
  p_emb = encode_no_grad(p_chunks, n_p)
  (loss, metrics), (g_q, g_p) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(q_emb, p_emb)

  def pull_back(acc, chunk: dict, g_chunk: jax.Array, texts_per_chunk: int):
    _, vjp = jax.vjp(lambda p: encode_fn(p, chunk, texts_per_chunk), params)
    (g_params,) = vjp(g_chunk.astype(jnp.float32))
    return jax.tree.map(jnp.add, acc, g_params)

  def accumulate(grads, chunks: dict, g_emb: jax.Array, texts: int):
    num_chunks, rows = chunks["input_ids"].shape[:2]
    if is_packed(chunks):
      # Every chunk pulls back the whole embedding gradient, read from the closure (a scan
      # constant) rather than broadcast to [C, N, D].
      grads, _ = jax.lax.scan(lambda acc, chunk: (pull_back(acc, chunk, g_emb, texts), None),
                              grads, chunks)
      return grads
    g_c = chunk_rows(g_emb, num_chunks, num_shards, mesh, batch_axes)
    grads, _ = jax.lax.scan(lambda acc, xs: (pull_back(acc, *xs, rows), None), grads, (chunks, g_c))
    return grads

  grads = jax.tree.map(jnp.zeros_like, params)
  grads = accumulate(grads, q_chunks, g_q, n_q)
  grads = accumulate(grads, p_chunks, g_p, n_p)
  return (loss, metrics), grads
