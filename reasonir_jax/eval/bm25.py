"""The BM25 baseline, in two variants (`--protocol`):

- reference (default): BRIGHT's baseline (eval/protocol.py, BM25 section): Pyserini-like English
  analysis (word segmentation, possessive 's dropped, lower case, Lucene's English stopwords,
  Porter stemming via PyStemmer's "porter"; one-character tokens kept) and gensim's
  LuceneBM25Model applied to the query as well (idf twice, query-side saturation), k1 0.9, b 0.4.
- ours: bm25s's plain Lucene scoring (query terms unweighted) with bm25s's tokenizer (its
  `\\w\\w+` pattern drops one-character tokens) and PyStemmer's "english" (Snowball) stemmer.
"""
from __future__ import annotations

import collections
import logging
import re
import time
from typing import Sequence

import numpy as np

from reasonir_jax.eval import protocol

log = logging.getLogger(__name__)

# Unicode word segmentation as Lucene's StandardTokenizer does it for Latin text: runs of word
# characters, joined across an apostrophe or a period between letters/digits ("don't", "e.g",
# "3.14") and a comma between digits ("1,000").
_WORD = re.compile(r"\w+(?:(?:['’.]|(?<=\d),(?=\d))\w+)*")


def _stemmer(algorithm: str):
  import Stemmer
  return Stemmer.Stemmer(algorithm)


class Analyzer:
  """Text -> tokens like Pyserini's default analyzer (see the module docstring)."""

  def __init__(self):
    self._stem = _stemmer(protocol.PORTER_STEMMER).stemWords

  def __call__(self, text: str) -> list[str]:
    tokens = []
    for m in _WORD.finditer(text.lower()):
      t = m.group(0)
      if t.endswith(("'s", "’s")):
        t = t[:-2]
      if t and t not in protocol.LUCENE_ENGLISH_STOPWORDS:
        tokens.append(t)
    return self._stem(tokens)


class LuceneQueryWeightedBM25:
  """gensim's LuceneBM25Model weights on documents and queries; score = their dot product."""

  def __init__(self, corpus_tokens: Sequence[Sequence[str]], k1: float = protocol.BM25_K1,
               b: float = protocol.BM25_B):
    import scipy.sparse as sp
    self.k1, self.b = k1, b
    self.vocab: dict[str, int] = {}
    rows, cols, tfs, lengths = [], [], [], []
    for i, tokens in enumerate(corpus_tokens):
      counts = collections.Counter(tokens)
      for term, tf in counts.items():
        rows.append(i)
        cols.append(self.vocab.setdefault(term, len(self.vocab)))
        tfs.append(tf)
      lengths.append(len(tokens))
    n = len(lengths)
    rows, cols, tfs = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(tfs, np.float64)
    self.num_docs = n
    self.avgdl = float(np.sum(lengths)) / max(n, 1)
    df = np.bincount(cols, minlength=len(self.vocab)).astype(np.float64)
    self.idf = np.log(n + 1.0) - np.log(df + 0.5)
    doc_len = np.asarray(lengths, np.float64)[rows]
    weights = self._weights(tfs, doc_len, self.idf[cols])
    self.matrix = sp.csr_matrix((weights, (rows, cols)), shape=(n, max(len(self.vocab), 1)))

  def _weights(self, tf, length, idf):
    return idf * tf / (tf + self.k1 * (1.0 - self.b + self.b * length / self.avgdl))

  def query_vector(self, tokens: Sequence[str]):
    """The query's (term ids, weights): only corpus terms count, for the length too."""
    counts = collections.Counter(t for t in tokens if t in self.vocab)
    ids = np.array([self.vocab[t] for t in counts], dtype=np.int64)
    tf = np.array(list(counts.values()), dtype=np.float64)
    return ids, self._weights(tf, float(tf.sum()), self.idf[ids]) if len(ids) else tf

  def scores(self, queries_tokens: Sequence[Sequence[str]]) -> np.ndarray:
    """[num_queries, num_docs] float64 scores."""
    import scipy.sparse as sp
    rows, cols, vals = [], [], []
    for j, tokens in enumerate(queries_tokens):
      ids, w = self.query_vector(tokens)
      rows.extend(ids.tolist())
      cols.extend([j] * len(ids))
      vals.extend(w.tolist())
    q = sp.csr_matrix((vals, (rows, cols)), shape=(self.matrix.shape[1], len(queries_tokens)))
    return np.asarray((self.matrix @ q).T.todense())


class BM25Index:
  def __init__(self, texts: Sequence[str], k1: float = protocol.BM25_K1, b: float = protocol.BM25_B,
               show_progress: bool = False, protocol_name: str = "reference"):
    if protocol_name not in protocol.PROTOCOLS:
      raise ValueError(f"--protocol {protocol_name!r}: choose from {', '.join(protocol.PROTOCOLS)}")
    self.protocol = protocol_name
    self.n = len(texts)
    self.show_progress = show_progress
    t0 = time.time()
    if protocol_name == "reference":
      self.analyzer = Analyzer()
      self.model = LuceneQueryWeightedBM25([self.analyzer(t) for t in texts], k1, b)
    else:
      import bm25s
      self._bm25s = bm25s
      self.stemmer = _stemmer("english")
      tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, show_progress=show_progress)
      self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
      self.retriever.index(tokens, show_progress=show_progress)
    log.info("BM25 (%s) index of %d documents in %.1fs", protocol_name, self.n, time.time() - t0)

  def search(self, queries: Sequence[str], k: int,
             query_block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k'], corpus indices [q, k']) with k' = min(k, corpus size), best first; with
    the reference protocol equal scores keep corpus order (zero-score documents included)."""
    k = min(k, self.n)
    if self.protocol == "ours":
      tokens = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self.stemmer,
                                    return_ids=False, show_progress=self.show_progress)
      indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=self.show_progress)
      return np.asarray(scores, dtype=np.float32), np.asarray(indices, dtype=np.int64)
    out_s, out_i = [], []
    for start in range(0, len(queries), query_block):
      s = self.model.scores([self.analyzer(q) for q in queries[start:start + query_block]])
      top = np.stack([top_k_indices(row, k) for row in s]) if len(s) else np.zeros((0, k), np.int64)
      out_i.append(top)
      out_s.append(np.take_along_axis(s, top, axis=1))
    if not out_s:
      return np.zeros((0, k), np.float64), np.zeros((0, k), np.int64)
    return np.concatenate(out_s), np.concatenate(out_i)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
  """The indices of the k highest scores, best first, equal scores in index order: the same
  ranking on every machine, also among the many zero-score documents. O(n + k log k)."""
  if k >= len(scores):
    return np.argsort(-scores, kind="stable")
  kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th highest score
  above = np.flatnonzero(scores > kth)
  above = above[np.argsort(-scores[above], kind="stable")]
  tied = np.flatnonzero(scores == kth)[:k - len(above)]  # ascending index
  return np.concatenate([above, tied]).astype(np.int64)
