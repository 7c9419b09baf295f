"""Helpers shared by the pipelines: provenance metadata and rejects."""
from __future__ import annotations

import json

from data_gen.stage import Outcome


def merge_metadata(existing: str, key: str, value: dict) -> str:
  """Adds `key: value` to a row's metadata JSON (non-JSON metadata is kept under "original")."""
  try:
    meta = json.loads(existing) if existing else {}
  except json.JSONDecodeError:
    meta = {"original": existing}
  if not isinstance(meta, dict):
    meta = {"original": meta}
  meta[key] = value
  return json.dumps(meta, ensure_ascii=False, sort_keys=True)


def rejected(input_id: str, failure: dict, steps: dict) -> Outcome:
  return Outcome(input_id=input_id, reject=failure, steps=steps)
