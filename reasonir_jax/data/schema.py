"""One training row: a query, its positive(s) and hard negatives, each with an instruction.

This is the unit that the converters and `data_gen` write and the input pipeline reads. On disk
it is one `tf.train.Example` per row (see docs/data_format.md for the feature names).
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class TrainingRow:
  row_id: str
  source: str  # e.g. "public", "hq", "vl": mixing weights and single-source batches key on it
  query: str
  positives: list[str]
  negatives: list[str] = dataclasses.field(default_factory=list)
  query_instruction: str = ""
  positive_instruction: str = ""  # "" = document template (no instruction)
  negative_instruction: str = ""
  # Free-form JSON provenance, e.g. {"generator": ..., "prompt": ..., "sampling": {...}}.
  metadata: str = ""
  # The row's weight in the InfoNCE mean over the global batch (training/loss.py): finite, >= 0;
  # e.g. an LLM judge's score (data_gen's `judge` stage) for curriculum or intensity weighting.
  weight: float = 1.0

  def empty_texts(self) -> list[str]:
    """The texts that are empty or whitespace only, by field: "query", "positives[0]", ...

    Such a text has no token to mean-pool, so it would embed to nothing; no writer accepts one.
    """
    texts = [("query", self.query)]
    for name in ("positives", "negatives"):
      values = getattr(self, name)
      if isinstance(values, (list, tuple)):  # other types are the codec's TypeError
        texts += [(f"{name}[{i}]", t) for i, t in enumerate(values)]
    return [field for field, text in texts if isinstance(text, str) and not text.strip()]

  def validate(self) -> "TrainingRow":
    if not self.row_id:
      raise ValueError("row has an empty row_id")
    if not self.positives:
      raise ValueError(f"row {self.row_id!r}: needs at least one positive")
    weight_problem = check_weight(self.weight)
    if weight_problem:
      raise ValueError(f"row {self.row_id!r}: weight {weight_problem}")
    empty = self.empty_texts()
    if empty:
      raise ValueError(f"row {self.row_id!r}: empty {', '.join(empty)} (empty or whitespace-only "
                       "text)")
    return self


def check_weight(value) -> str:
  """"" for a valid row weight (a finite real number >= 0), else what is wrong with it."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return f"must be a number, got {type(value).__name__} {value!r:.40}"
  if not math.isfinite(value) or value < 0:
    return f"must be finite and >= 0, got {value!r}"
  return ""
