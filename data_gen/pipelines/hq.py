"""HQ: reasoning-intensive queries written from seed documents; the document is the positive.

Seed documents are filtered first (length bounds, exact and near-duplicate removal, an optional
quality scorer with a threshold and top N); every shard machine filters the full input the same
way, then takes its shard.
"""
from __future__ import annotations

import collections
import json
from typing import Callable, Iterable, Sequence

from data_gen import prompts, prompts_public
from data_gen.filters import exact_dedup, length_filter, near_dedup, normalize, quality_filter
from data_gen.generate import run_step
from data_gen.parsing import AnswerError, require_keys, require_standalone, require_text
from data_gen.pipelines.common import rejected
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow


def filter_documents(docs: Iterable[dict], *, min_words: int = 50,
                     max_words: int | None = 2000, near_dup_threshold: float | None = 0.8,
                     scorer: Callable[[list[str]], Sequence[float]] | None = None,
                     min_score: float = 1.0, top_n: int | None = None) -> tuple[list[dict], dict]:
  """The filtered documents and a report of how many each filter kept. Streams: `docs` may be
  an iterator, and only the kept documents (with a scorer and top N: ~2N) are held."""
  counts = collections.Counter()

  def counted(stage, items):
    for item in items:
      counts[stage] += 1
      yield item

  stream = counted("input", docs)
  stream = counted("after_length", length_filter(stream, min_words, max_words))
  stream = counted("after_exact_dedup", exact_dedup(stream))
  if near_dup_threshold is not None:
    stream = counted("after_near_dedup", near_dedup(stream, threshold=near_dup_threshold))
  if scorer is not None:
    kept = quality_filter(stream, scorer, min_score=min_score, top_n=top_n)
    counts["after_quality"] = len(kept)
  elif top_n is not None:
    kept = []
    for d in stream:  # the first N by id, keeping at most ~2N
      kept.append(d)
      if len(kept) > 2 * top_n:
        kept = sorted(kept, key=lambda d: d["id"])[:top_n]
    kept = sorted(kept, key=lambda d: d["id"])[:top_n]
    counts["after_top_n"] = len(kept)
  else:
    kept = list(stream)
  names = ["input", "after_length", "after_exact_dedup"]
  names += ["after_near_dedup"] if near_dup_threshold is not None else []
  names += ["after_quality"] if scorer is not None else []
  names += ["after_top_n"] if scorer is None and top_n is not None else []
  return kept, {k: counts[k] for k in names}


PROMPT_STYLES = ("ours", "public")
HQ_PROMPT_SPECS = {"ours": prompts.HQ_PROMPTS, "public": prompts_public.HQ_PUBLIC_PROMPTS}


def _joined_question(q):
  """A public-style question may come as {"scenario": ..., "question": ...}: one text."""
  if isinstance(q, dict) and set(q) == {"scenario", "question"} and all(
      isinstance(v, str) for v in q.values()):
    return f"{q['scenario'].strip()} {q['question'].strip()}"
  return q


class HQPipeline(Pipeline):
  name = "hq"

  def __init__(self, gen: Generation, queries_per_doc: int = 4, domain: str | None = None,
               min_query_words: int = 8, max_query_words: int = 400, prompt_style: str = "ours",
               prompts=None):
    if prompt_style not in PROMPT_STYLES:
      raise ValueError(f"--prompt-style {prompt_style!r}: choose from {PROMPT_STYLES}")
    self.prompt_style = prompt_style
    # The wording in force (--prompt-file): stage "hq", or "hq-public" with the public style.
    self.prompt_spec = HQ_PROMPT_SPECS[prompt_style]
    self.prompts = prompts or self.prompt_spec.defaults()
    if self.prompts.stage != self.prompt_spec.stage:
      raise ValueError(f"--prompt-style {prompt_style} takes {self.prompt_spec.stage} prompts, "
                       f"got {self.prompts.stage}")
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
    return {**self.gen.settings(), "prompt": self.prompt_name, "queries_per_doc": self.n,
            "domain": self.domain, "query_words": [self.min_query_words, self.max_query_words],
            **prompts.custom_wording(self.prompts, self.prompt_spec)}

  @property
  def prompt_name(self) -> str:
    return prompts.HQ_QUERIES if self.prompt_style == "ours" else prompts_public.HQ_QUERIES_PUBLIC

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
      if self.prompt_style == "public":
        q = _joined_question(q)
      out.append(require_standalone(
          require_text(q, field, self.min_query_words, self.max_query_words), field))
    if len({normalize(q) for q in out}) < len(out):
      raise AnswerError("hard_query repeats a query")
    return out

  def process(self, batch: list[dict]) -> list[Outcome]:
    docs = {d["id"]: d for d in batch}
    if self.prompt_style == "public":  # reasoning first, JSON last: no constrained decoding
      build, schema = prompts_public.hq_queries_public, None
    else:
      build, schema = prompts.hq_queries, prompts.hq_queries_schema(self.n)
    convs = {i: build(d["text"], self.n, d.get("domain") or self.domain, self.prompts)
             for i, d in docs.items()}
    result = run_step(self.gen.backend, self.gen.sampling, "queries", convs, self._validate,
                      schema, ["hard_query"], self.gen.max_attempts)
    outcomes = []
    for doc_id, doc in docs.items():
      steps = {"queries": result.step_info(doc_id)}
      if doc_id not in result.values:
        outcomes.append(rejected(doc_id, result.failures[doc_id], steps))
        continue
      domain = doc.get("domain") or self.domain
      rows = []
      for k, query in enumerate(result.values[doc_id]):
        meta = self.gen.metadata(self.prompt_name, pipeline="hq", doc_id=doc_id,
                                 query_index=k, attempts=result.attempts[doc_id],
                                 **prompts.custom_wording(self.prompts, self.prompt_spec))
        if "quality_score" in doc:
          meta["quality_score"] = doc["quality_score"]
        rows.append(TrainingRow(
            row_id=f"hq/{doc_id}/{k}", source="hq", query=query, positives=[doc["text"]],
            query_instruction=prompts.query_instruction(domain, "question"),
            metadata=json.dumps(meta, ensure_ascii=False, sort_keys=True)).validate())
      outcomes.append(Outcome(input_id=doc_id, rows=rows, steps=steps))
    return outcomes
