"""VL: varied-length queries (300-2000 words, in length buckets), then a positive document for
each. Each seed input is assigned a bucket by a stable hash of its id; the query's word count is
checked against the bucket (with an optional relative tolerance)."""
from __future__ import annotations

import json
from typing import Sequence

from data_gen import prompts
from data_gen.prompts import VL_PROMPTS
from data_gen.generate import run_step
from data_gen.inputs import stable_hash
from data_gen.parsing import AnswerError, require_keys, require_standalone, require_text
from data_gen.pipelines.common import rejected
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow

DEFAULT_BUCKETS = ((300, 600), (600, 1000), (1000, 1500), (1500, 2000))


def parse_buckets(spec: str) -> tuple[tuple[int, int], ...]:
  """'300-600,600-1000' -> ((300, 600), (600, 1000)); errors name the flag."""
  buckets = []
  for part in spec.split(","):
    try:
      lo, hi = (int(x) for x in part.split("-"))
    except ValueError:
      raise ValueError(f"--buckets {spec!r}: {part!r} is not LO-HI (e.g. 300-600)") from None
    if not 0 < lo <= hi:
      raise ValueError(f"--buckets {spec!r}: bucket {part!r} needs 0 < LO <= HI")
    buckets.append((lo, hi))
  return tuple(buckets)


class VLPipeline(Pipeline):
  name = "vl"

  def __init__(self, gen: Generation, buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS,
               length_tolerance: float = 0.0, positive_words: tuple[int, int] = (150, 1500),
               domain: str | None = None, prompts=None):
    self.prompts = prompts or VL_PROMPTS.defaults()  # the "vl" wording in force (--prompt-file)
    if self.prompts.stage != VL_PROMPTS.stage:
      raise ValueError(f"the vl pipeline takes vl prompts, got {self.prompts.stage}")
    if not buckets:
      raise ValueError("--buckets: at least one bucket is needed")
    self.gen = gen
    self.buckets = tuple(tuple(b) for b in buckets)
    self.tolerance = length_tolerance
    self.positive_words = tuple(positive_words)
    self.domain = domain

  def input_id(self, seed: dict) -> str:
    return seed["id"]

  def bucket(self, seed_id: str) -> tuple[int, int]:
    return self.buckets[stable_hash(f"vl-bucket/{seed_id}") % len(self.buckets)]

  def settings(self) -> dict:
    return {**self.gen.settings(), "prompt": [prompts.VL_QUERY, prompts.VL_POSITIVE],
            "buckets": self.buckets, "length_tolerance": self.tolerance,
            "positive_words": self.positive_words, "domain": self.domain,
            **prompts.custom_wording(self.prompts, VL_PROMPTS)}

  def _validate_query(self, seed_id, obj: dict) -> str:
    require_keys(obj, {"query"})
    lo, hi = self.bucket(seed_id)
    lo_ok, hi_ok = int(lo * (1 - self.tolerance)), int(hi * (1 + self.tolerance))
    try:
      return require_standalone(require_text(obj["query"], "query", lo_ok, hi_ok), "query")
    except AnswerError as e:
      raise AnswerError(f"{e} (length bucket {lo}-{hi} words)") from None

  def _validate_positive(self, seed_id, obj: dict) -> str:
    del seed_id
    require_keys(obj, {"positive_document"})
    return require_text(obj["positive_document"], "positive_document", *self.positive_words)

  def process(self, batch: list[dict]) -> list[Outcome]:
    seeds = {s["id"]: s for s in batch}
    convs = {i: prompts.vl_query(s["text"], *self.bucket(i), s.get("domain") or self.domain,
                                 self.prompts) for i, s in seeds.items()}
    queries = run_step(self.gen.backend, self.gen.sampling, "query", convs,
                       self._validate_query, prompts.VL_QUERY_SCHEMA, ["query"],
                       self.gen.max_attempts)
    convs = {i: prompts.vl_positive(q, *self.positive_words, self.prompts)
             for i, q in queries.values.items()}
    positives = run_step(self.gen.backend, self.gen.sampling, "positive", convs,
                         self._validate_positive, prompts.VL_POSITIVE_SCHEMA,
                         ["positive_document"], self.gen.max_attempts)
    outcomes = []
    for seed_id, seed in seeds.items():
      steps = {"query": queries.step_info(seed_id)}
      if seed_id not in queries.values:
        outcomes.append(rejected(seed_id, queries.failures[seed_id], steps))
        continue
      steps["positive"] = positives.step_info(seed_id)
      if seed_id not in positives.values:
        outcomes.append(rejected(seed_id, positives.failures[seed_id], steps))
        continue
      lo, hi = self.bucket(seed_id)
      meta = self.gen.metadata([prompts.VL_QUERY, prompts.VL_POSITIVE], pipeline="vl",
                               seed_id=seed_id, bucket=[lo, hi],
                               attempts={k: v["attempts"] for k, v in steps.items()},
                               **prompts.custom_wording(self.prompts, VL_PROMPTS))
      domain = seed.get("domain") or self.domain
      row = TrainingRow(
          row_id=f"vl/{seed_id}", source="vl", query=queries.values[seed_id],
          positives=[positives.values[seed_id]],
          query_instruction=prompts.query_instruction(domain, "post"),
          metadata=json.dumps(meta, ensure_ascii=False, sort_keys=True)).validate()
      outcomes.append(Outcome(input_id=seed_id, rows=[row], steps=steps))
    return outcomes
