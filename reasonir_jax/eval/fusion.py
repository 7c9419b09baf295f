"""Fusing ranked lists: dense with BM25 (hybrid retrieval) and several query variants (rewrites).

Every list is one retriever's top-k for one query set, as a run {qid: {docid: score}}; each comes
with a weight. Two methods (`--fusion`):

- score: the weighted sum of min-max normalised scores. A retriever's scores are normalised per
  query over that retriever's own top-k, (s - min) / (max - min), so its best document scores 1
  and its k-th 0 whatever the scale: dense cosines sit in a narrow band near their top while BM25
  scores are unbounded and vary per query, so raw scores cannot be added, and a z-score would
  depend on how deep the list is cut in a heavy tail. A list whose scores are all equal (one
  document, or a tie throughout) gives each of its documents 1: none is worse than its best. A
  document missing from a list gets 0 from it: it ranked below that list's k-th document, which
  scores 0.
- rrf: reciprocal-rank fusion, sum of weight / (k + rank) with rank 1 for a list's best document
  (k = 60 by default, Cormack et al. 2009). Ranks follow trec_eval's order (score descending, then
  docid descending), so tied scores get consecutive ranks in the order the metrics see them. A
  document missing from a list gets nothing from it.

Queries without any list entry are kept with an empty ranking. The fused run keeps each query's
best `top_k` documents (trec_eval's order again, so a fused tie is cut the way it is ranked).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from reasonir_jax.eval import metrics

METHODS = ("score", "rrf")
RRF_K = 60

Run = Mapping[str, Mapping[str, float]]


def min_max(docs: Mapping[str, float]) -> dict[str, float]:
  """One query's list scaled to [0, 1] over its own entries (all 1.0 when they are all equal)."""
  if not docs:
    return {}
  lo, hi = min(docs.values()), max(docs.values())
  if hi == lo:
    return {d: 1.0 for d in docs}
  return {d: (s - lo) / (hi - lo) for d, s in docs.items()}


def reciprocal_ranks(docs: Mapping[str, float], k: int = RRF_K) -> dict[str, float]:
  """1 / (k + rank) for each document of one query's list, rank 1 = best (trec_eval's order)."""
  return {d: 1.0 / (k + rank) for rank, d in enumerate(metrics.ranked_ids(docs), 1)}


def top(docs: Mapping[str, float], k: int | None) -> dict[str, float]:
  return {d: docs[d] for d in metrics.ranked_ids(docs)[:k]}


def fuse(runs: Sequence[Run], weights: Sequence[float], method: str = "score", *, rrf_k: int = RRF_K,
         top_k: int | None = None) -> dict[str, dict[str, float]]:
  """The weighted fusion of `runs` (see the module docstring); queries in any run are kept."""
  if method not in METHODS:
    raise ValueError(f"fusion method {method!r}: choose from {', '.join(METHODS)}")
  if len(runs) != len(weights):
    raise ValueError(f"{len(runs)} runs but {len(weights)} weights")
  if not runs:
    raise ValueError("nothing to fuse: no runs given")
  for w in weights:
    if not (math.isfinite(w) and w >= 0):
      raise ValueError(f"fusion weight {w}: must be finite and >= 0")
  if rrf_k < 0:
    raise ValueError(f"rrf k {rrf_k}: must be >= 0")
  qids = list(dict.fromkeys(q for run in runs for q in run))
  out = {}
  for qid in qids:
    fused: dict[str, float] = {}
    for run, w in zip(runs, weights):
      docs = run.get(qid, {})
      part = min_max(docs) if method == "score" else reciprocal_ranks(docs, rrf_k)
      for d, s in part.items():
        fused[d] = fused.get(d, 0.0) + w * s
    out[qid] = top(fused, top_k)
  return out
