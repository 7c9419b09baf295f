"""HQ: reasoning-intensive queries written from seed documents; the document is the positive.

Seed documents are filtered first (length bounds, exact and near-duplicate removal, an optional
quality scorer with a threshold and top N); every shard machine filters the full input the same
way, then takes its shard.
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

from data_gen import prompts
from data_gen.filters import exact_dedup, length_filter, near_dedup, normalize, quality_filter
from data_gen.generate import run_step
from data_gen.parsing import AnswerError, require_keys, require_standalone, require_text
from data_gen.pipelines.common import rejected
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow


def filter_documents(docs: Sequence[dict], *, min_words: int = 50, max_words: int | None = 2000,
                     near_dup_threshold: float | None = 0.8,
                     scorer: Callable[[list[str]], Sequence[float]] | None = None,
                     min_score: float = 1.0, top_n: int | None = None) -> tuple[list[dict], dict]:
  """The filtered documents and a report of how many each filter kept."""
  report = {"input": len(docs)}
  docs = length_filter(docs, min_words, max_words)
  report["after_length"] = len(docs)
  docs = exact_dedup(docs)
  report["after_exact_dedup"] = len(docs)
  if near_dup_threshold is not None:
    docs = near_dedup(docs, threshold=near_dup_threshold)
    report["after_near_dedup"] = len(docs)
  if scorer is not None:
    docs = quality_filter(docs, scorer, min_score=min_score, top_n=top_n)
    report["after_quality"] = len(docs)
  elif top_n is not None:
    docs = sorted(docs, key=lambda d: d["id"])[:top_n]
    report["after_top_n"] = len(docs)
  return list(docs), report


class HQPipeline(Pipeline):
  name = "hq"

  def __init__(self, gen: Generation, queries_per_doc: int = 4, domain: str | None = None,
               min_query_words: int = 8, max_query_words: int = 400):
    if queries_per_doc < 1:
      raise ValueError(f"--queries-per-doc must be >= 1, got {queries_per_doc}")
    self.gen = gen
    self.n = queries_per_doc
    self.domain = domain
    self.min_query_words = min_query_words
    self.max_query_words = max_query_words

  def input_id(self, doc: dict) -> str:
    return doc["id"]

  def settings(self) -> dict:
    return {**self.gen.settings(), "prompt": prompts.HQ_QUERIES, "queries_per_doc": self.n,
            "domain": self.domain, "query_words": [self.min_query_words, self.max_query_words]}

  def _validate(self, key, obj: dict) -> list[str]:
    require_keys(obj, {"hard_query"})
    queries = obj["hard_query"]
    if not isinstance(queries, list):
      raise AnswerError(f"hard_query is {type(queries).__name__}, expected a list")
    if len(queries) < self.n:
      raise AnswerError(f"hard_query has {len(queries)} queries, expected {self.n}")
    out = []
    for i, q in enumerate(queries[:self.n]):  # extra queries are dropped
      field = f"hard_query[{i}]"
      out.append(require_standalone(
          require_text(q, field, self.min_query_words, self.max_query_words), field))
    if len({normalize(q) for q in out}) < len(out):
      raise AnswerError("hard_query repeats a query")
    return out

  def process(self, batch: list[dict]) -> list[Outcome]:
    docs = {d["id"]: d for d in batch}
    convs = {i: prompts.hq_queries(d["text"], self.n, d.get("domain") or self.domain)
             for i, d in docs.items()}
    result = run_step(self.gen.backend, self.gen.sampling, "queries", convs, self._validate,
                      prompts.hq_queries_schema(self.n), ["hard_query"], self.gen.max_attempts)
    outcomes = []
    for doc_id, doc in docs.items():
      steps = {"queries": result.step_info(doc_id)}
      if doc_id not in result.values:
        outcomes.append(rejected(doc_id, result.failures[doc_id], steps))
        continue
      domain = doc.get("domain") or self.domain
      rows = []
      for k, query in enumerate(result.values[doc_id]):
        meta = self.gen.metadata(prompts.HQ_QUERIES, pipeline="hq", doc_id=doc_id,
                                 query_index=k, attempts=result.attempts[doc_id])
        if "quality_score" in doc:
          meta["quality_score"] = doc["quality_score"]
        rows.append(TrainingRow(
            row_id=f"hq/{doc_id}/{k}", source="hq", query=query, positives=[doc["text"]],
            query_instruction=prompts.query_instruction(domain, "question"),
            metadata=json.dumps(meta, ensure_ascii=False, sort_keys=True)).validate())
      outcomes.append(Outcome(input_id=doc_id, rows=rows, steps=steps))
    return outcomes
