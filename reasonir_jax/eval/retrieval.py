"""Exact top-k retrieval on device, streaming the corpus in fixed-size blocks.

Only one corpus block (block_size x dim), one query block and a [queries, k] running best list
live on the device at a time, so a 414k x 4096 corpus (held on the host, memory-mapped from the
embedding cache, or generated block by block) needs a bounded amount of device memory. Blocks are
sharded over every device of the mesh; excluded (query, document) pairs are set to -inf on device
before the top-k, so they can never enter a ranking.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(0, 1))
def _merge_block(best_s_qk, best_i_qk, q_qd, block_bd, offset, n_valid, excl_qe, *, k: int):
  """Scores one corpus block and merges its top-k into the running best list."""
  b = block_bd.shape[0]
  s_qb = jnp.einsum("qd,bd->qb", q_qd.astype(jnp.float32), block_bd.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  col_b = jnp.arange(b)
  s_qb = jnp.where((col_b < n_valid)[None, :], s_qb, -jnp.inf)  # padding of the last block
  local_qe = excl_qe - offset
  inside = (excl_qe >= 0) & (local_qe >= 0) & (local_qe < b)
  local_qe = jnp.where(inside, local_qe, b)  # out of range: dropped by the scatter
  rows_qe = jnp.broadcast_to(jnp.arange(s_qb.shape[0])[:, None], local_qe.shape)
  s_qb = s_qb.at[rows_qe, local_qe].set(-jnp.inf, mode="drop")
  blk_s, blk_i = jax.lax.top_k(s_qb, min(k, b))
  cat_s = jnp.concatenate([best_s_qk, blk_s], axis=1)
  cat_i = jnp.concatenate([best_i_qk, blk_i.astype(jnp.int32) + offset], axis=1)
  top_s, pos = jax.lax.top_k(cat_s, k)
  return top_s, jnp.take_along_axis(cat_i, pos, axis=1)


def _pad_excluded(excluded: Sequence[Sequence[int]] | None, n_queries: int) -> np.ndarray:
  width = max([len(e) for e in excluded] + [1]) if excluded else 1
  width = 1 << (width - 1).bit_length()  # power of two: few distinct compilations
  out = np.full((n_queries, width), -1, dtype=np.int32)
  for i, e in enumerate(excluded or []):
    out[i, :len(e)] = np.asarray(e, dtype=np.int32)
  return out


def _stage_block(corpus_nd, start: int, block_size: int, sharding):
  """Corpus rows [start, start + block_size) on device, zero-padded to block_size."""
  block = np.asarray(corpus_nd[start:start + block_size])
  n_valid = len(block)
  if n_valid < block_size:
    block = np.concatenate([block, np.zeros((block_size - n_valid, block.shape[1]), block.dtype)])
  return (jax.device_put(block, sharding) if sharding is not None else jnp.asarray(block)), n_valid


def exact_top_k(queries_qd: np.ndarray, corpus_nd, k: int, *, block_size: int = 32768,
                query_block: int = 1024, excluded: Sequence[Sequence[int]] | None = None,
                mesh: Mesh | None = None, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Top-k inner products of every query against the corpus, exactly.

  `corpus_nd` is anything with `len()` and row slicing (np.ndarray, np.memmap,
  `cache.ChunkedEmbeddings`, or a generator object for benchmarks). `excluded[i]` lists corpus
  row indices that query i must never retrieve. Returns (scores [q, k] float32, indices [q, k]
  int64); when fewer than k rows are allowed the tail has index -1 and score -inf.
  """
  n = len(corpus_nd)
  n_q = len(queries_qd)
  if excluded is not None and len(excluded) != n_q:
    raise ValueError(f"excluded has {len(excluded)} entries for {n_q} queries")
  devices = mesh.devices.size if mesh is not None else 1
  block_size = max(devices, -(-min(block_size, max(n, 1)) // devices) * devices)
  block_sharding = NamedSharding(mesh, P(mesh.axis_names)) if mesh is not None else None
  excl = _pad_excluded(excluded, n_q)
  out_s = np.full((n_q, k), -np.inf, dtype=np.float32)
  out_i = np.full((n_q, k), -1, dtype=np.int64)
  t0 = time.time()
  bar = None
  if show_progress:
    from tqdm import tqdm
    bar = tqdm(total=n * max(1, -(-n_q // query_block)), desc="top-k", unit="doc", unit_scale=True)
  for q0 in range(0, n_q, query_block):
    q_qd = jnp.asarray(queries_qd[q0:q0 + query_block], dtype=jnp.float32)
    excl_qe = jnp.asarray(excl[q0:q0 + query_block])
    nq = q_qd.shape[0]
    best_s = jnp.full((nq, k), -jnp.inf, dtype=jnp.float32)
    best_i = jnp.full((nq, k), -1, dtype=jnp.int32)
    starts = list(range(0, n, block_size))
    staged = _stage_block(corpus_nd, 0, block_size, block_sharding)
    for j, start in enumerate(starts):
      block, n_valid = staged
      best_s, best_i = _merge_block(best_s, best_i, q_qd, block, np.int32(start), np.int32(n_valid),
                                    excl_qe, k=k)
      del block, staged
      # Stage the next block while this one computes, then wait: dispatch is asynchronous, and
      # without the wait every block would be queued (and held in memory) at once.
      staged = (_stage_block(corpus_nd, starts[j + 1], block_size, block_sharding)
                if j + 1 < len(starts) else None)
      best_s.block_until_ready()
      if bar is not None:
        bar.update(n_valid)
    out_s[q0:q0 + nq] = np.asarray(best_s)
    out_i[q0:q0 + nq] = np.asarray(best_i)
  if bar is not None:
    bar.close()
  out_i[~np.isfinite(out_s)] = -1
  log.info("exact top-%d: %d queries x %d docs in %.1fs", k, n_q, n, time.time() - t0)
  return out_s, out_i


def excluded_indices(excluded_ids: Sequence[Sequence[str]], doc_index: Mapping[str, int]) -> list[list[int]]:
  """Maps excluded document ids to corpus rows; ids not in the corpus are ignored."""
  return [[doc_index[d] for d in ids if d in doc_index] for ids in excluded_ids]


def to_run(query_ids: Sequence[str], doc_ids: Sequence[str], scores_qk: np.ndarray,
           indices_qk: np.ndarray) -> dict[str, dict[str, float]]:
  """{qid: {docid: score}} for the valid (index >= 0) entries."""
  run = {}
  for qid, s_k, i_k in zip(query_ids, scores_qk, indices_qk):
    run[qid] = {doc_ids[i]: float(s) for s, i in zip(s_k, i_k) if i >= 0}
  return run


def drop_excluded(run: Mapping[str, Mapping[str, float]], excluded: Mapping[str, Sequence[str]],
                  k: int) -> dict[str, dict[str, float]]:
  """Removes excluded ids from host-side runs (BM25), then keeps the best k per query."""
  out = {}
  for qid, docs in run.items():
    bad = set(excluded.get(qid, ()))
    kept = sorted(((d, s) for d, s in docs.items() if d not in bad), key=lambda x: -x[1])[:k]
    out[qid] = dict(kept)
  return out
