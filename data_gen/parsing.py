"""Every LLM answer is data: find the JSON object in it (tolerating ```json fences and leading or
trailing prose), then validate it strictly. Problems raise `AnswerError` with a short reason
that goes to the rejects file and the retry prompt."""
from __future__ import annotations

import json
import re

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


class AnswerError(ValueError):
  """An LLM answer that does not parse or validate; the message is the reason."""


def word_count(text: str) -> int:
  return len(_WORD_RE.findall(text))


def words(text: str) -> list[str]:
  return [w.lower() for w in _WORD_RE.findall(text)]


def _candidates(text: str):
  for match in _FENCE_RE.finditer(text):
    yield match.group(1).strip()
  yield text.strip()
  # Leading/trailing prose: try every '{' as the start of an object.
  decoder = json.JSONDecoder()
  for match in re.finditer(r"\{", text):
    try:
      obj, _ = decoder.raw_decode(text, match.start())
    except json.JSONDecodeError:
      continue
    yield obj


def _objects(text: str):
  for candidate in _candidates(text):
    if isinstance(candidate, dict):
      yield candidate
      continue
    try:
      obj = json.loads(candidate)
    except (json.JSONDecodeError, TypeError):
      continue
    if isinstance(obj, dict):
      yield obj


def extract_json_object(text: str, keys: list[str] | None = None) -> dict:
  """The first JSON object found in `text`; with `keys`, the last object that has all of them
  (an answer that reasons first and gives its JSON at the end may show other objects, or a
  draft, on the way), else the first. Raises AnswerError if there is none."""
  if not isinstance(text, str) or not text.strip():
    raise AnswerError("empty answer")
  first, best = None, None
  for obj in _objects(text):
    if keys is None:
      return obj
    first = obj if first is None else first
    if all(k in obj for k in keys):
      best = obj
  if best is not None or first is not None:
    return best if best is not None else first
  raise AnswerError("no JSON object found in the answer")


def require_keys(obj: dict, keys: set[str]) -> None:
  """Exactly these keys: a missing or an unexpected key is an error."""
  missing = keys - obj.keys()
  if missing:
    raise AnswerError(f"missing key(s) {sorted(missing)}")
  extra = obj.keys() - keys
  if extra:
    raise AnswerError(f"unexpected key(s) {sorted(extra)}")


def require_text(value, field: str, min_words: int = 1, max_words: int | None = None) -> str:
  """A non-empty string whose word count lies in [min_words, max_words]."""
  if not isinstance(value, str):
    raise AnswerError(f"{field} is {type(value).__name__}, expected a string")
  value = value.strip()
  if not value:
    raise AnswerError(f"{field} is empty")
  n = word_count(value)
  if n < min_words:
    raise AnswerError(f"{field} has {n} words, needs at least {min_words}")
  if max_words is not None and n > max_words:
    raise AnswerError(f"{field} has {n} words, allows at most {max_words}")
  return value


_SELF_REFERENCE_RE = re.compile(
    r"\b(the|this|given|above|provided|following) (document|passage|text|article|excerpt)\b",
    re.IGNORECASE)


def require_standalone(value: str, field: str) -> str:
  """Queries must stand alone: no reference to 'the document', 'this passage', ..."""
  match = _SELF_REFERENCE_RE.search(value)
  if match:
    raise AnswerError(f"{field} refers to {match.group(0)!r}; it must stand alone")
  return value
