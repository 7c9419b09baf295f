"""An LLM judge scores each training row; the score becomes the row's loss weight.

The judge reads the query (with its instruction) and the row's first positive and grades the pair
from 1 to 5 (prompts.JUDGE_PROMPTS: 1 = the document does not help, or only shares keywords; 5 =
it supplies what the query needs and only careful reasoning shows the link), explaining first. The
weight is linear in the score: `min_weight` at 1, `max_weight` at 5 (defaults 0.2 and 1.0, i.e.
score / 5), so the InfoNCE weighted mean (training/loss.py) leans on the reasoning-intensive rows.
Output: the input rows unchanged except `weight` and a `judge` entry in their metadata (score,
reasoning, prompt, attempts). A row the judge never scores validly is rejected (rejects file), as
in the other stages.
"""
from __future__ import annotations

import dataclasses
import math

from data_gen import prompts
from data_gen.generate import run_step
from data_gen.parsing import AnswerError, require_keys, require_text
from data_gen.pipelines.common import merge_metadata, rejected
from data_gen.prompts import JUDGE_PROMPTS
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow


def score_to_weight(score: int, min_weight: float, max_weight: float) -> float:
  """The linear map from the judge's scale to a loss weight."""
  lo, hi = prompts.JUDGE_MIN_SCORE, prompts.JUDGE_MAX_SCORE
  return min_weight + (max_weight - min_weight) * (score - lo) / (hi - lo)


def parse_score(obj: dict) -> tuple[int, str]:
  """(score, reasoning) of a judge answer, or AnswerError saying what is wrong."""
  require_keys(obj, {"reasoning", "score"})
  reasoning = require_text(obj["reasoning"], "reasoning")
  score = obj["score"]
  if isinstance(score, float) and score.is_integer():
    score = int(score)
  if isinstance(score, bool) or not isinstance(score, int):
    raise AnswerError(f"score is {score!r}, expected a whole number")
  if not prompts.JUDGE_MIN_SCORE <= score <= prompts.JUDGE_MAX_SCORE:
    raise AnswerError(f"score {score} is outside {prompts.JUDGE_MIN_SCORE}..{prompts.JUDGE_MAX_SCORE}")
  return score, reasoning


class JudgePipeline(Pipeline):
  name = "judge"

  def __init__(self, gen: Generation, min_weight: float = 0.2, max_weight: float = 1.0, prompts=None):
    for flag, value in (("--min-weight", min_weight), ("--max-weight", max_weight)):
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{flag} {value}: must be finite and >= 0")
    if max_weight < min_weight:
      raise ValueError(f"--max-weight {max_weight} is below --min-weight {min_weight}")
    self.gen = gen
    self.min_weight, self.max_weight = float(min_weight), float(max_weight)
    self.prompts = prompts or JUDGE_PROMPTS.defaults()  # the wording in force (--prompt-file)

  def input_id(self, row: TrainingRow) -> str:
    return row.row_id

  def settings(self) -> dict:
    return {**self.gen.settings(), "prompt": [prompts.JUDGE],
            "weights": [self.min_weight, self.max_weight],
            **prompts.custom_wording(self.prompts, JUDGE_PROMPTS)}

  def process(self, batch: list[TrainingRow]) -> list[Outcome]:
    rows = {r.row_id: r for r in batch}
    convs = {i: prompts.judge_messages(r.query_instruction, r.query, r.positives[0], self.prompts)
             for i, r in rows.items()}
    scores = run_step(self.gen.backend, self.gen.sampling, "judge", convs, lambda k, obj: parse_score(obj),
                      prompts.JUDGE_SCHEMA, ["reasoning", "score"], self.gen.max_attempts)
    outcomes = []
    for row_id, row in rows.items():
      steps = {"judge": scores.step_info(row_id)}
      if row_id not in scores.values:
        outcomes.append(rejected(row_id, scores.failures[row_id], steps))
        continue
      score, reasoning = scores.values[row_id]
      weight = score_to_weight(score, self.min_weight, self.max_weight)
      provenance = self.gen.metadata([prompts.JUDGE], attempts=steps["judge"]["attempts"], score=score,
                                     reasoning=reasoning, weight=weight,
                                     **prompts.custom_wording(self.prompts, JUDGE_PROMPTS))
      new = dataclasses.replace(row, weight=weight, metadata=merge_metadata(row.metadata, "judge", provenance))
      outcomes.append(Outcome(input_id=row_id, rows=[new.validate()], steps=steps))
    return outcomes
