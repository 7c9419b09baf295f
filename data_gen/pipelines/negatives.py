"""Multi-turn hard negatives: turn 1 the LLM analyses what the query needs and what the positive
gives; turn 2 (same conversation) it writes a document of >= N words that looks related but
lacks those ideas. The answer is checked for length and for low lexical overlap with the
positive; each turn gets up to `max_attempts` tries. Output: the input rows with the negative as
their only negative, replacing any they had, as the public script does (`append=True` keeps
their negatives and appends it).

With `prompt_style="public"` it is one turn instead (the public code's structure, see
prompts_public): instruction + query and instruction + positive in, reasoning allowed, the
JSON taken from the end of the answer."""
from __future__ import annotations

import dataclasses

from data_gen import prompts, prompts_public
from data_gen.filters import lexical_overlap
from data_gen.generate import run_step
from data_gen.parsing import AnswerError, require_keys, require_text
from data_gen.pipelines.common import merge_metadata, rejected
from data_gen.runner import Generation, Pipeline
from data_gen.stage import Outcome
from reasonir_jax.data.schema import TrainingRow


NEGATIVES_PROMPT_SPECS = {"ours": prompts.NEGATIVES_PROMPTS,
                          "public": prompts_public.NEGATIVES_PUBLIC_PROMPTS}


class NegativesPipeline(Pipeline):
  name = "negatives"

  def __init__(self, gen: Generation, min_words: int = 300, max_words: int | None = 2000,
               max_overlap: float = 0.4, prompt_style: str = "ours", prompts=None,
               append: bool = False):
    if prompt_style not in ("ours", "public"):
      raise ValueError(f"--prompt-style {prompt_style!r}: choose from ('ours', 'public')")
    self.prompt_style = prompt_style
    # The wording in force (--prompt-file): stage "negatives", or "negatives-public".
    self.prompt_spec = NEGATIVES_PROMPT_SPECS[prompt_style]
    self.prompts = prompts or self.prompt_spec.defaults()
    if self.prompts.stage != self.prompt_spec.stage:
      raise ValueError(f"--prompt-style {prompt_style} takes {self.prompt_spec.stage} prompts, "
                       f"got {self.prompts.stage}")
    self.gen = gen
    self.min_words = min_words
    self.max_words = max_words
    self.max_overlap = max_overlap
    self.append = append

  def input_id(self, row: TrainingRow) -> str:
    return row.row_id

  def settings(self) -> dict:
    return {**self.gen.settings(), "prompt": self.prompt_names,
            "negative_words": [self.min_words, self.max_words], "max_overlap": self.max_overlap,
            "negatives": "append" if self.append else "replace",
            **prompts.custom_wording(self.prompts, self.prompt_spec)}

  @property
  def prompt_names(self) -> list[str]:
    if self.prompt_style == "public":
      return [prompts_public.NEG_PUBLIC]
    return [prompts.NEG_ANALYSIS, prompts.NEG_DOCUMENT]

  def _validator(self, rows: dict):
    def validate(row_id, obj: dict) -> str:
      require_keys(obj, {"hard_negative_document"})
      doc = require_text(obj["hard_negative_document"], "hard_negative_document",
                         self.min_words, self.max_words)
      positive = rows[row_id].positives[0]
      overlap = lexical_overlap(doc, positive)
      if overlap > self.max_overlap:
        raise AnswerError(f"word overlap with the positive is {overlap:.2f}, above "
                          f"{self.max_overlap}: use different words")
      return doc
    return validate

  def _single_turn(self, rows: dict):
    convs = {i: prompts_public.negative_public(r.query_instruction, r.query,
                                               r.positive_instruction, r.positives[0],
                                               self.min_words, self.prompts)
             for i, r in rows.items()}
    negatives = run_step(self.gen.backend, self.gen.sampling, "negative", convs,
                         self._validator(rows), None, ["hard_negative_document"],
                         self.gen.max_attempts)
    return None, negatives

  def process(self, batch: list[TrainingRow]) -> list[Outcome]:
    rows = {r.row_id: r for r in batch}
    if self.prompt_style == "public":
      analyses, negatives = self._single_turn(rows)
    else:
      analyses, negatives = self._two_turns(rows)
    outcomes = []
    for row_id, row in rows.items():
      steps = {}
      if analyses is not None:
        steps["analysis"] = analyses.step_info(row_id)
        if row_id not in analyses.values:
          outcomes.append(rejected(row_id, analyses.failures[row_id], steps))
          continue
      steps["negative"] = negatives.step_info(row_id)
      if row_id not in negatives.values:
        outcomes.append(rejected(row_id, negatives.failures[row_id], steps))
        continue
      negative = negatives.values[row_id]
      provenance = self.gen.metadata(
          self.prompt_names, attempts={k: v["attempts"] for k, v in steps.items()},
          overlap=round(lexical_overlap(negative, row.positives[0]), 4),
          negatives="append" if self.append else "replace",
          negatives_before=len(row.negatives),
          **prompts.custom_wording(self.prompts, self.prompt_spec))
      new = dataclasses.replace(
          row, negatives=[*row.negatives, negative] if self.append else [negative],
          metadata=merge_metadata(row.metadata, "hard_negative", provenance))
      outcomes.append(Outcome(input_id=row_id, rows=[new.validate()], steps=steps))
    return outcomes

  def _two_turns(self, rows: dict):
    first_turn = {i: prompts.negative_analysis(r.query, r.positives[0], self.prompts)
                  for i, r in rows.items()}
    analyses = run_step(self.gen.backend, self.gen.sampling, "analysis", first_turn,
                        lambda k, text: require_text(text, "analysis", 5), None, None,
                        self.gen.max_attempts)

    second_turn = {i: prompts.negative_document(first_turn[i], a, self.min_words, self.prompts)
                   for i, a in analyses.values.items()}
    negatives = run_step(self.gen.backend, self.gen.sampling, "negative", second_turn,
                         self._validator(rows), prompts.NEG_DOCUMENT_SCHEMA, ["hard_negative_document"],
                         self.gen.max_attempts)
    return analyses, negatives
