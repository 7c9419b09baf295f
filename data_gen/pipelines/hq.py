"""HQ: reasoning-intensive queries written from seed documents; the document is the positive.

Seed documents are selected first as the public ReasonIR pipeline does (exact duplicates removed
within each BRIGHT task, an educational-quality classifier's raw score >= 1, the top N of each
task), with optional length bounds and near-duplicate removal of our own; every shard machine
filters the full input the same way, then takes its shard.
"""
from __future__ import annotations

import collections
import json
import logging
from typing import Callable, Iterable, Sequence

from data_gen import prompts, prompts_public
from data_gen.filters import (by_score, exact_dedup, length_filter, near_dedup, normalize,
                              scored, top_per_task)
from data_gen.generate import run_step
from data_gen.parsing import AnswerError, require_keys, require_standalone, require_text
from data_gen.pipelines.common import rejected
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow

log = logging.getLogger(__name__)


QUALITY_FLAGS_HELP = (
    "give --quality-model DIR (a FineWeb-Edu style classifier: the published selection keeps raw "
    "score >= --min-quality, then the --top-n best of each BRIGHT task) or --quality-scorer "
    "module:function; or add --take-first to keep the first --top-n documents of each task by "
    "id, unscored")


def filter_documents(docs: Iterable[dict], *, min_words: int = 1,
                     max_words: int | None = None, near_dup_threshold: float | None = None,
                     scorer: Callable[[list[str]], Sequence[float]] | None = None,
                     min_score: float = 1.0, top_n: int | None = None,
                     take_first: bool = False,
                     batch_size: int = 256) -> tuple[list[dict], dict]:
  """The filtered documents and a report of how many each filter kept. The defaults are the
  public ReasonIR seed selection (only empty documents dropped, exact duplicates removed within
  each task, then with a scorer: score >= `min_score`, the `top_n` best of each task); length
  bounds and near-duplicate removal are ours, off unless asked for. `top_n` without a scorer is
  refused unless `take_first` (the first N of each task by id, logged as a warning). Streams:
  `docs` may be an iterator; only the kept documents (with `top_n`: ~2N per task) are held."""
  if top_n is not None and top_n < 1:
    raise ValueError(f"--top-n must be >= 1, got {top_n}")
  if take_first and scorer is not None:
    raise ValueError("--take-first keeps documents unscored: drop it, or drop the quality scorer")
  if take_first and top_n is None:
    raise ValueError("--take-first needs --top-n N (the number of documents kept per task)")
  if top_n is not None and scorer is None and not take_first:
    raise ValueError(f"--top-n {top_n} without a quality scorer would keep documents by id, not "
                     f"quality: {QUALITY_FLAGS_HELP}")
  counts = collections.Counter()

  def counted(stage, items):
    for item in items:
      counts[stage] += 1
      yield item

  stream = counted("input", docs)
  stream = counted("after_length", length_filter(stream, min_words, max_words))
  stream = counted("after_exact_dedup", exact_dedup(stream))
  names = ["input", "after_length", "after_exact_dedup"]
  if near_dup_threshold is not None:
    stream = counted("after_near_dedup", near_dedup(stream, threshold=near_dup_threshold))
    names.append("after_near_dedup")
  if scorer is not None:
    stream = counted("after_min_quality", (d for d in scored(stream, scorer, batch_size)
                                           if d["quality_score"] >= min_score))
    names.append("after_min_quality")
    kept = top_per_task(stream, by_score, top_n, batch_size)
  elif take_first:
    kept = top_per_task(stream, lambda d: d["id"], top_n, batch_size)
  else:
    kept = list(stream)
    log.warning("seed filter: no quality scorer, so all %d documents left after deduplication "
                "are kept unscored (the published selection scores them: --quality-model)",
                len(kept))
  if top_n is not None:
    counts["after_top_n"] = len(kept)
    names.append("after_top_n")
  if take_first:
    by_task = collections.defaultdict(list)
    for d in kept:
      by_task[d.get("task") or "(no task)"].append(d["id"])
    log.warning("--take-first: kept the first %d documents of each task BY ID, NOT BY QUALITY "
                "(no quality scorer ran): %s", top_n,
                "; ".join(f"{t}: {len(ids)} ({ids[0]} .. {ids[-1]})"
                          for t, ids in sorted(by_task.items())) or "none")
  report = {k: counts[k] for k in names}
  per_task = collections.Counter(d["task"] for d in kept if d.get("task"))
  if per_task:
    report["kept_per_task"] = dict(sorted(per_task.items()))
  return kept, report


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
        for field in ("quality_score", "task"):
          if field in doc:
            meta[field] = doc[field]
        rows.append(TrainingRow(
            row_id=f"hq/{doc_id}/{k}", source="hq", query=query, positives=[doc["text"]],
            query_instruction=prompts.query_instruction(domain, "question"),
            metadata=json.dumps(meta, ensure_ascii=False, sort_keys=True)).validate())
      outcomes.append(Outcome(input_id=doc_id, rows=rows, steps=steps))
    return outcomes
