"""BM25 hard-negative mining: for each row, the first corpus document at rank >= `min_rank`
(1-based) that is not gold (a positive of the row) and not already a negative of it, with a
non-zero BM25 score. The corpus is a documents file, or, without one, the positives of all
input rows. Output: the rows with the mined negative(s) appended."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

from data_gen.filters import normalize
from data_gen.pipelines.common import merge_metadata, rejected
from data_gen.runner import Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow


def _key(text: str) -> bytes:
  return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


class MinePipeline(Pipeline):
  name = "mine"

  def __init__(self, corpus: Sequence[dict], min_rank: int = 21, num_negatives: int = 1,
               depth: int = 100, corpus_name: str = "", k1: float = 0.9, b: float = 0.4,
               stemmer: str | None = "porter"):
    """`corpus`: dicts with `id` and `text`; `depth`: how many ranks past `min_rank` to look.
    The defaults follow the public ReasonIR miner: the 21st document on (it skips the top 20),
    Lucene BM25 with k1 0.9 and b 0.4 on stemmed (Porter), stopword-free tokens."""
    import bm25s
    if min_rank < 1:
      raise ValueError(f"--min-rank must be >= 1, got {min_rank}")
    if num_negatives < 1:
      raise ValueError(f"--num-negatives must be >= 1, got {num_negatives}")
    if not corpus:
      raise ValueError("mine: the corpus is empty")
    self._bm25s = bm25s
    self.corpus = list(corpus)
    self.keys = [_key(d["text"]) for d in self.corpus]
    self.min_rank = min_rank
    self.num_negatives = num_negatives
    self.depth = depth
    self.corpus_name = corpus_name
    self.k1, self.b, self.stemmer_name = k1, b, stemmer
    self._stem = None
    if stemmer:
      import Stemmer  # PyStemmer
      try:
        self._stem = Stemmer.Stemmer(stemmer).stemWords
      except KeyError:
        raise ValueError(f"--stemmer {stemmer!r}: PyStemmer knows "
                         f"{sorted(Stemmer.algorithms())}") from None
    tokens = bm25s.tokenize([d["text"] for d in self.corpus], stopwords="en",
                            stemmer=self._stem, show_progress=False)
    self.retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
    self.retriever.index(tokens, show_progress=False)

  def input_id(self, row: TrainingRow) -> str:
    return row.row_id

  def settings(self) -> dict:
    return {"method": "bm25", "k1": self.k1, "b": self.b, "stemmer": self.stemmer_name,
            "min_rank": self.min_rank, "num_negatives": self.num_negatives,
            "depth": self.depth, "corpus": self.corpus_name, "corpus_size": len(self.corpus)}

  def process(self, batch: list[TrainingRow]) -> list[Outcome]:
    k = min(len(self.corpus), self.min_rank - 1 + self.depth)
    # Queries as word lists, so they share the corpus vocabulary (unknown words score 0).
    query_tokens = self._bm25s.tokenize([r.query for r in batch], stopwords="en",
                                        stemmer=self._stem, return_ids=False,
                                        show_progress=False)
    query_tokens = [q if q else ["\x00"] for q in query_tokens]
    ids, scores = self.retriever.retrieve(query_tokens, k=k, show_progress=False)
    outcomes = []
    for row, doc_ids, doc_scores in zip(batch, ids, scores):
      excluded = {_key(t) for t in [*row.positives, *row.negatives]}
      picked, ranks = [], []
      for rank, (doc, score) in enumerate(zip(doc_ids, doc_scores), start=1):
        if rank < self.min_rank or score <= 0 or self.keys[doc] in excluded:
          continue
        picked.append(self.corpus[doc])
        ranks.append(rank)
        if len(picked) == self.num_negatives:
          break
      steps = {"mine": {"attempts": 1, "ok": len(picked) == self.num_negatives}}
      if len(picked) < self.num_negatives:
        reason = (f"found {len(picked)} of {self.num_negatives} non-gold documents with a "
                  f"non-zero score at ranks {self.min_rank}..{k}")
        outcomes.append(rejected(row.row_id, {"step": "mine", "reason": reason, "attempts": []},
                                 steps))
        continue
      meta = {"method": "bm25", "min_rank": self.min_rank, "ranks": ranks,
              "doc_ids": [d["id"] for d in picked], "corpus": self.corpus_name}
      new = dataclasses.replace(row, negatives=[*row.negatives, *(d["text"] for d in picked)],
                                metadata=merge_metadata(row.metadata, "mined_negative", meta))
      outcomes.append(Outcome(input_id=row.row_id, rows=[new.validate()], steps=steps))
    return outcomes
