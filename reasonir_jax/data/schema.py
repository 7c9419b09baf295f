"""One training row: a query, its positive(s) and hard negatives, each with an instruction.

This is the unit that the converters and `data_gen` write and the input pipeline reads. On disk
it is one `tf.train.Example` per row (see docs/data_format.md for the feature names).
"""
from __future__ import annotations

import dataclasses


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

  def validate(self) -> "TrainingRow":
    if not self.row_id:
      raise ValueError("row has an empty row_id")
    if not self.query:
      raise ValueError(f"row {self.row_id!r}: empty query")
    if not self.positives or not all(self.positives):
      raise ValueError(f"row {self.row_id!r}: needs at least one non-empty positive")
    return self
