"""BRIGHT's BM25 baseline: scores equal a small reimplementation of gensim's LuceneBM25Model with
the query weighted by the same model (as BRIGHT's retrievers.py uses it), and Pyserini-like tokens."""
import math

import numpy as np
import pytest

from reasonir_jax.eval import bm25, bright, bright_data, protocol


def _gensim_lucene_scores(corpus_tokens, query_tokens, k1=0.9, b=0.4):
  """Written from gensim's Dictionary / LuceneBM25Model / SparseMatrixSimilarity behaviour:
  idf = ln(N + 1) - ln(df + 0.5); a text's term weight = idf * tf / (tf + k1 * (1 - b + b * len /
  avgdl)) with len its bag-of-words size; the query is a bag of words over the corpus dictionary
  (unknown words dropped) weighted the same way; the score is the unnormalised dot product."""
  token2id = {}
  for doc in corpus_tokens:
    for t in doc:
      token2id.setdefault(t, len(token2id))
  dfs = {}
  for doc in corpus_tokens:
    for t in set(doc):
      dfs[token2id[t]] = dfs.get(token2id[t], 0) + 1
  num_docs = len(corpus_tokens)
  avgdl = sum(len(d) for d in corpus_tokens) / num_docs
  idfs = {i: math.log(num_docs + 1.0) - math.log(f + 0.5) for i, f in dfs.items()}

  def doc2bow(tokens):
    bow = {}
    for t in tokens:
      if t in token2id:
        bow[token2id[t]] = bow.get(token2id[t], 0) + 1
    return bow

  def weigh(bow):
    num_tokens = sum(bow.values())
    return {i: idfs[i] * tf / (tf + k1 * (1 - b + b * num_tokens / avgdl)) for i, tf in bow.items()}

  q = weigh(doc2bow(query_tokens))
  return [sum(w * d.get(i, 0.0) for i, w in q.items()) for d in (weigh(doc2bow(doc)) for doc in corpus_tokens)]


def _toy_corpus(rng, n_docs=40, vocab=30):
  words = [f"w{i}" for i in range(vocab)] + ["x", "5"]
  docs = [list(rng.choice(words, size=rng.integers(0, 25))) for _ in range(n_docs)]
  queries = [list(rng.choice(words + ["unseen"], size=rng.integers(1, 12))) for _ in range(8)]
  return docs, queries


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_gensim_lucene_with_query_weighting(seed):
  docs, queries = _toy_corpus(np.random.default_rng(seed))
  model = bm25.LuceneQueryWeightedBM25(docs, protocol.BM25_K1, protocol.BM25_B)
  ours = model.scores(queries)
  for j, q in enumerate(queries):
    np.testing.assert_allclose(ours[j], _gensim_lucene_scores(docs, q), atol=1e-6, rtol=0)
  # The query side matters: a repeated query term saturates instead of counting twice.
  twice = model.scores([["w1", "w1"]])[0]
  once = model.scores([["w1"]])[0]
  assert not np.allclose(twice, 2 * once)


def test_index_search_ranks_like_the_reimplementation():
  texts = ["The cell's mitochondria make ATP.", "Let x = 5 and solve for x.", "a b c d", "Cells divide.",
           "Mitochondria, mitochondria everywhere", ""]
  index = bm25.BM25Index(texts)
  analyzer = bm25.Analyzer()
  for query in ("mitochondria cells", "x = 5", "nothing matches zzz"):
    ref = np.asarray(_gensim_lucene_scores([analyzer(t) for t in texts], analyzer(query)))
    scores, indices = index.search([query], k=4)
    np.testing.assert_allclose(scores[0], np.sort(ref)[::-1][:4], atol=1e-9)
    np.testing.assert_allclose(ref[indices[0]], scores[0], atol=1e-9)


def test_analyzer_is_pyserini_like():
  analyze = bm25.Analyzer()
  # One-character tokens are kept ("a" is a Lucene stopword); "C++" gives "c".
  assert analyze("x = 5 a b C++") == ["x", "5", "b", "c"]
  assert analyze("John's cells") == ["john", "cell"]  # possessive dropped, lower case, stemmed
  # Porter, not Snowball English ("generously": Porter "gener", Snowball "generous").
  assert analyze("generously fairly") == ["gener", "fairli"]
  assert analyze("the of and to") == []
  assert analyze("3.14 and 1,000") == ["3.14", "1,000"]


def test_ours_variant_is_bm25s_plain():
  texts = ["x = 5", "alpha beta", "beta gamma gamma"]
  ours = bm25.BM25Index(texts, protocol_name="ours")
  scores, indices = ours.search(["gamma x"], k=3)
  assert indices[0][0] == 2  # bm25s drops the one-character "x": only "gamma" counts
  with pytest.raises(ValueError, match="--protocol"):
    bm25.BM25Index(texts, protocol_name="pyserini")


def test_bm25_run_reference_keeps_zero_scores_and_drops_excluded(bright_dir):
  examples = bright_data.load_examples(bright_dir, "biology")
  ids, docs = bright_data.load_documents(bright_dir, "biology")
  run = bright.bm25_run("biology", examples, ids, docs, top_k=1000)
  assert len(run["b0"]) == len(ids) - 1 and "bio_dup" not in run["b0"]  # every document but the excluded
  ours = bright.bm25_run("biology", examples, ids, docs, top_k=1000, protocol_name="ours")
  assert all(s > 0 for s in ours["b0"].values()) and len(ours["b0"]) < len(run["b0"])


def test_equal_scores_keep_corpus_order():
  # The same ranking on every machine, zero-score documents included (the miner takes from them).
  s = np.array([0.0, 2.0, 0.0, 2.0, 1.0, 0.0])
  assert bm25.top_k_indices(s, 4).tolist() == [1, 3, 4, 0]
  assert bm25.top_k_indices(s, 6).tolist() == [1, 3, 4, 0, 2, 5]
  scores, indices = bm25.BM25Index(["alpha", "beta", "gamma", "delta"]).search(["zzz", "gamma"], 3)
  assert indices.tolist() == [[0, 1, 2], [2, 0, 1]] and scores[0].tolist() == [0, 0, 0]
