"""The MTEB wrapper: a tiny local retrieval task run by mteb itself (query instruction from the task,
documents with none), its nDCG@10 equal to our own scorer on the same embeddings, and the real
Encoder behind it."""
import numpy as np
import pytest

from reasonir_jax.eval import metrics
from reasonir_jax.eval.mteb_encoder import DEFAULT_QUERY_INSTRUCTION, MTEBEncoder

mteb = pytest.importorskip("mteb")

INSTRUCTION = "Given a science question, retrieve passages that answer it"
QUERIES = {"q1": "why do cells need mitochondria for ATP energy",
           "q2": "how do plants turn light into glucose",
           "q3": "what copies dna before a cell divides"}
CORPUS = {"d1": "mitochondria make ATP energy for the cell by respiration",
          "d2": "photosynthesis turns light into glucose in plants",
          "d3": "dna polymerase copies dna before the cell divides",
          "d4": "binary search halves a sorted interval",
          "d5": "enzymes lower activation energy of reactions in the cell"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1, "d5": 1}}


def tiny_task(prompt=None):
  from datasets import Dataset
  from mteb.abstasks.retrieval import AbsTaskRetrieval
  from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
  from mteb.abstasks.task_metadata import TaskMetadata

  class TinyScienceRetrieval(AbsTaskRetrieval):
    metadata = TaskMetadata(
        type="Retrieval", name="TinyScienceRetrieval", main_score="ndcg_at_10", prompt=prompt,
        description="Three science questions over five passages, for testing the wrapper.",
        reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "NA", "revision": "NA"},
        category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2025-01-01", "2025-01-01"),
        dialect=["Written"], domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived",
        modalities=["text"], sample_creation="created", bibtex_citation="")

    def load_data(self, num_proc=None, **kwargs):
      split = RetrievalSplitData(
          queries=Dataset.from_list([{"id": k, "text": v} for k, v in QUERIES.items()]),
          corpus=Dataset.from_list([{"id": k, "text": v, "title": ""} for k, v in CORPUS.items()]),
          relevant_docs=QRELS, top_ranked=None)
      self.dataset = {"default": {"test": split}}
      self.data_loaded = True

  return TinyScienceRetrieval()


class Recording:
  """Wraps an encoder and records (texts, instruction) of every call."""

  def __init__(self, inner):
    self.inner, self.calls, self.model_cfg = inner, [], getattr(inner, "model_cfg", None)

  def encode(self, texts, instruction=None, **kw):
    self.calls.append((list(texts), instruction))
    return self.inner.encode(texts, instruction=instruction, **kw)


def _score(model, task):
  result = mteb.evaluate(model, [task], cache=None, show_progress_bar=False, overwrite_strategy="always")
  return result.task_results[0].scores["test"][0]


def test_mteb_runs_tiny_task_with_task_instruction_and_matches_our_scorer(bow_encoder):
  enc = Recording(bow_encoder())
  scores = _score(MTEBEncoder(enc), tiny_task(prompt={"query": INSTRUCTION}))
  queries = [c for c in enc.calls if c[1] is not None]
  documents = [c for c in enc.calls if c[1] is None]
  assert {i for _, i in queries} == {INSTRUCTION}
  assert sorted(t for c in queries for t in c[0]) == sorted(QUERIES.values())
  assert sorted(t for c in documents for t in c[0]) == sorted(CORPUS.values())  # no instruction, no title
  # Our scorer (pytrec_eval semantics) on the same embeddings gives mteb's nDCG@10.
  q = bow_encoder().encode(list(QUERIES.values()))
  d = bow_encoder().encode(list(CORPUS.values()))
  s = q @ d.T
  run = {qid: {did: float(s[i, j]) for j, did in enumerate(CORPUS)} for i, qid in enumerate(QUERIES)}
  ours = metrics.evaluate(run, QRELS)
  assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)
  assert scores["ndcg_at_10"] > 0.9  # the bag of words finds every answer


def test_instruction_sources_in_order(bow_encoder):
  enc = Recording(bow_encoder())
  model = MTEBEncoder(enc, instructions={"TinyScienceRetrieval": "mine"})
  _score(model, tiny_task(prompt=INSTRUCTION))
  assert {c[1] for c in enc.calls} == {"mine", None}
  enc.calls.clear()
  _score(MTEBEncoder(enc), tiny_task(prompt=None))
  assert {c[1] for c in enc.calls} == {DEFAULT_QUERY_INSTRUCTION, None}
  # mteb 1.x style call: a list of strings and a task name.
  out = MTEBEncoder(enc, instructions={"T": "x"}).encode(["a b", "c"], task_name="T", prompt_type="query")
  assert out.shape == (2, 64) and out.dtype == np.float32 and enc.calls[-1][1] == "x"
  with pytest.raises(TypeError, match="one string"):
    MTEBEncoder(enc).encode("a b")


def test_real_encoder_behind_mteb(tiny_model_dir):
  from reasonir_jax.eval.bright import load_encoder
  encoder = load_encoder(tiny_model_dir, "float32", "auto")
  model = MTEBEncoder(encoder, max_length=64, batch_size=8)
  scores = _score(model, tiny_task(prompt={"query": INSTRUCTION}))
  assert 0.0 <= scores["ndcg_at_10"] <= 1.0 and model.mteb_model_meta.embed_dim == 32
  q = model.encode(list(QUERIES.values()), task_name="TinyScienceRetrieval", prompt_type="query")
  direct = encoder.encode(list(QUERIES.values()), instruction=DEFAULT_QUERY_INSTRUCTION, max_length=64)
  np.testing.assert_allclose(q, direct, atol=1e-6)
