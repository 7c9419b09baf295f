"""nDCG@k and recall@k with trec_eval semantics, and TREC run files.

Matches pytrec_eval's `ndcg_cut.k` and `recall.k` (tested against it, ties included):
- a query's documents are ranked by score descending, then by docid descending (trec_eval's
  order, strcmp on the ids), whatever order the run lists them in;
- gains are the qrels' relevance values (> 0); DCG uses 1 / log2(rank + 1);
  the ideal DCG comes from all judged relevant documents, retrieved or not;
- recall@k = relevant documents in the top k / all relevant documents in the qrels;
- only queries present in both the run and the qrels (with at least one judgment) are scored,
  and the mean is over those.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ranked_ids(docs: Mapping[str, float]) -> list[str]:
  """trec_eval's order: score descending, then docid descending."""
  if not docs:
    return []
  ids = np.array(list(docs.keys()), dtype=object)
  scores = np.fromiter(docs.values(), dtype=np.float64, count=len(docs))
  # lexsort's last key is the primary one; reversing an ascending (score, id) sort gives
  # score descending then id descending.
  order = np.lexsort((ids.astype(str), scores))[::-1]
  return ids[order].tolist()


def _discounts(n: int) -> np.ndarray:
  return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def ndcg_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
  gains = np.array([max(rels.get(d, 0), 0) for d in ranking[:k]], dtype=np.float64)
  dcg = float(np.sum(gains * _discounts(len(gains))))
  ideal = np.sort(np.array([r for r in rels.values() if r > 0], dtype=np.float64))[::-1][:k]
  idcg = float(np.sum(ideal * _discounts(len(ideal))))
  return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], rels: Mapping[str, int], k: int) -> float:
  num_rel = sum(1 for r in rels.values() if r > 0)
  if num_rel == 0:
    return 0.0
  return sum(1 for d in ranking[:k] if rels.get(d, 0) > 0) / num_rel


def per_query_metrics(run: Run, qrels: Qrels, ndcg_k: int = 10,
                      recall_k: int = 100) -> dict[str, dict[str, float]]:
  out = {}
  for qid, docs in run.items():
    if not qrels.get(qid) or not docs:  # pytrec_eval drops queries without judgments
      continue
    ranking = ranked_ids(docs)
    out[qid] = {f"ndcg@{ndcg_k}": ndcg_at_k(ranking, qrels[qid], ndcg_k),
                f"recall@{recall_k}": recall_at_k(ranking, qrels[qid], recall_k)}
  return out


def evaluate(run: Run, qrels: Qrels, ndcg_k: int = 10, recall_k: int = 100) -> dict[str, float]:
  """Mean nDCG@k and recall@k over the queries in both run and qrels (fractions, not %)."""
  per_query = per_query_metrics(run, qrels, ndcg_k, recall_k)
  keys = (f"ndcg@{ndcg_k}", f"recall@{recall_k}")
  if not per_query:
    return {key: 0.0 for key in keys} | {"num_queries": 0}
  means = {key: float(np.mean([m[key] for m in per_query.values()])) for key in keys}
  return means | {"num_queries": len(per_query)}


def write_trec_run(path: str, run: Run, tag: str = "reasonir_jax") -> None:
  """`qid Q0 docid rank score tag` lines, in trec_eval order per query (`path` may be remote)."""
  from reasonir_jax.eval.bright_data import write_text
  write_text(path, "".join(f"{qid} Q0 {doc} {rank} {float(docs[doc]):.8f} {tag}\n"
                           for qid, docs in run.items() for rank, doc in enumerate(ranked_ids(docs), 1)))


def read_trec_run(path: str) -> dict[str, dict[str, float]]:
  from reasonir_jax import paths
  if not paths.isfile(path):
    raise FileNotFoundError(f"run file {path} not found")
  run: dict[str, dict[str, float]] = {}
  with paths.open(path, "rb") as f:
    for n, line in enumerate(f.read().decode("utf-8").splitlines(), 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 6:
        raise ValueError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
      run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
  return run


def public_metrics(run: Run, qrels: Qrels, cutoffs: Sequence[int] | None = None) -> dict[str, float]:
  """BRIGHT's scorer (eval/protocol.py, metrics): pytrec_eval's map_cut, ndcg_cut, recall, P at
  the cut-offs and recip_rank, each a mean over the evaluated queries rounded to 5 decimals,
  as {"NDCG@k", "MAP@k", "Recall@k", "P@k", "MRR"}."""
  import pytrec_eval

  from reasonir_jax.eval import protocol
  cutoffs = cutoffs or protocol.METRIC_CUTOFFS
  ks = ",".join(str(k) for k in cutoffs)
  measures = {f"map_cut.{ks}", f"ndcg_cut.{ks}", f"recall.{ks}", f"P.{ks}", "recip_rank"}
  judged = {q: dict(r) for q, r in qrels.items() if r}
  per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(
      {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in judged and docs})
  names = [("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")]
  out = {}
  n = max(len(per_query), 1)
  for ours, theirs in names:
    for k in cutoffs:
      out[f"{ours}@{k}"] = round(sum(m[f"{theirs}_{k}"] for m in per_query.values()) / n,
                                 protocol.METRIC_DECIMALS)
  out["MRR"] = round(sum(m["recip_rank"] for m in per_query.values()) / n, protocol.METRIC_DECIMALS)
  return out


def write_qrels(path: str, qrels: Qrels) -> None:
  """TREC qrels lines `qid 0 docid relevance`."""
  from reasonir_jax.eval.bright_data import write_text
  write_text(path, "".join(f"{qid} 0 {doc} {int(rel)}\n" for qid, rels in qrels.items()
                           for doc, rel in rels.items()))


def write_score_json(path: str, run: Run) -> None:
  """BRIGHT's score.json: {qid: {docid: score}}, best first."""
  import json

  from reasonir_jax.eval.bright_data import write_text
  write_text(path, json.dumps({q: {d: float(docs[d]) for d in ranked_ids(docs)} for q, docs in run.items()},
                              indent=2))
