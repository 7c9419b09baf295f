"""BM25 hard-negative mining, as the public ReasonIR miner does it by default: the corpus is
ranked for each row's query with BRIGHT's reference BM25 (`reasonir_jax.eval.bm25`:
Pyserini-style tokens with one-character tokens kept, Porter stemming, gensim's Lucene BM25
weighting applied to the query as well, k1 0.9, b 0.4); the top `top_k` (1000) are searched, and
the negative is the first document at 0-based index >= `start_index` (20) that is not gold (a
positive of the row) nor already a negative of it. Zero scores are allowed (a query that matches
few documents still gets a negative; ties are broken by corpus order). The corpus is a documents
file, or, without one, the positives of all input rows. Output: the rows with the mined
negative(s) appended.

Variants (flags): `protocol="ours"` ranks with bm25s instead (plain Lucene scoring, query terms
unweighted, one-character tokens dropped, Snowball stemming); `skip_zero_scores` never takes a
document the query does not match.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

from data_gen.filters import normalize
from data_gen.pipelines.common import merge_metadata, rejected
from data_gen.runner import Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.eval import protocol as eval_protocol

# The public miner's constants.
TOP_K = 1000  # documents searched per query
START_INDEX = 20  # first 0-based index of the ranking a negative is taken from


def _key(text: str) -> bytes:
  return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


class MinePipeline(Pipeline):
  name = "mine"

  def __init__(self, corpus: Sequence[dict], start_index: int = START_INDEX,
               num_negatives: int = 1, top_k: int = TOP_K, corpus_name: str = "",
               k1: float = eval_protocol.BM25_K1, b: float = eval_protocol.BM25_B,
               protocol: str = "reference", skip_zero_scores: bool = False):
    """`corpus`: dicts with `id` and `text`."""
    from reasonir_jax.eval.bm25 import BM25Index
    if start_index < 0:
      raise ValueError(f"--start-index must be >= 0, got {start_index}")
    if top_k <= start_index:
      raise ValueError(f"--top-k ({top_k}) must be above --start-index ({start_index})")
    if num_negatives < 1:
      raise ValueError(f"--num-negatives must be >= 1, got {num_negatives}")
    if not corpus:
      raise ValueError("mine: the corpus is empty")
    self.corpus = list(corpus)
    self.keys = [_key(d["text"]) for d in self.corpus]
    self.start_index = start_index
    self.num_negatives = num_negatives
    self.top_k = top_k
    self.corpus_name = corpus_name
    self.k1, self.b, self.protocol = k1, b, protocol
    self.skip_zero_scores = skip_zero_scores
    self.index = BM25Index([d["text"] for d in self.corpus], k1=k1, b=b, protocol_name=protocol)

  def input_id(self, row: TrainingRow) -> str:
    return row.row_id

  def settings(self) -> dict:
    return {"method": "bm25", "protocol": self.protocol, "k1": self.k1, "b": self.b,
            "start_index": self.start_index, "top_k": self.top_k,
            "skip_zero_scores": self.skip_zero_scores, "num_negatives": self.num_negatives,
            "corpus": self.corpus_name, "corpus_size": len(self.corpus)}

  def pick(self, row: TrainingRow, doc_ids, doc_scores) -> tuple[list[dict], list[int]]:
    """The negatives for one row from its ranking (best first), and their 0-based indices."""
    excluded = {_key(t) for t in [*row.positives, *row.negatives]}
    picked, indices = [], []
    for i in range(self.start_index, len(doc_ids)):
      doc = int(doc_ids[i])
      if self.keys[doc] in excluded or (self.skip_zero_scores and doc_scores[i] <= 0):
        continue
      picked.append(self.corpus[doc])
      indices.append(i)
      if len(picked) == self.num_negatives:
        break
    return picked, indices

  def process(self, batch: list[TrainingRow]) -> list[Outcome]:
    scores, ids = self.index.search([r.query for r in batch], self.top_k)
    outcomes = []
    for row, doc_ids, doc_scores in zip(batch, ids, scores):
      picked, indices = self.pick(row, doc_ids, doc_scores)
      steps = {"mine": {"attempts": 1, "ok": len(picked) == self.num_negatives}}
      if len(picked) < self.num_negatives:
        scored = " with a non-zero score" if self.skip_zero_scores else ""
        reason = (f"found {len(picked)} of {self.num_negatives} non-gold documents{scored} at "
                  f"0-based indices {self.start_index}..{len(doc_ids) - 1} of the BM25 ranking "
                  f"(corpus of {len(self.corpus)}, top {self.top_k} searched)")
        outcomes.append(rejected(row.row_id, {"step": "mine", "reason": reason, "attempts": []},
                                 steps))
        continue
      meta = {"method": "bm25", "protocol": self.protocol, "start_index": self.start_index,
              "indices": indices, "scores": [round(float(doc_scores[i]), 4) for i in indices],
              "doc_ids": [d["id"] for d in picked], "corpus": self.corpus_name}
      new = dataclasses.replace(row, negatives=[*row.negatives, *(d["text"] for d in picked)],
                                metadata=merge_metadata(row.metadata, "mined_negative", meta))
      outcomes.append(Outcome(input_id=row.row_id, rows=[new.validate()], steps=steps))
    return outcomes
