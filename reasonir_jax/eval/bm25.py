"""The BM25 baseline, with bm25s: Lucene scoring, k1 0.9 / b 0.4 (Pyserini's defaults, which
BRIGHT's BM25 numbers use), English stopwords and Porter (Snowball English) stemming."""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def _stemmer():
  try:
    import Stemmer
  except ImportError:  # bm25s works without it; scores then differ slightly from Lucene's
    log.warning("PyStemmer is not installed: BM25 runs without stemming")
    return None
  return Stemmer.Stemmer("english")


class BM25Index:
  def __init__(self, texts: Sequence[str], k1: float = 0.9, b: float = 0.4, show_progress: bool = False):
    import bm25s
    self._bm25s = bm25s
    self.stemmer = _stemmer()
    self.n = len(texts)
    t0 = time.time()
    tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, show_progress=show_progress)
    self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    self.retriever.index(tokens, show_progress=show_progress)
    log.info("BM25 index of %d documents in %.1fs", self.n, time.time() - t0)

  def search(self, queries: Sequence[str], k: int,
             show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k'], corpus indices [q, k']) with k' = min(k, corpus size), best first."""
    k = min(k, self.n)
    tokens = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer,
                                  return_ids=False, show_progress=show_progress)
    indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=show_progress)
    return np.asarray(scores, dtype=np.float32), np.asarray(indices, dtype=np.int64)
