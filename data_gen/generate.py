"""One generation step over a batch: send every conversation, parse and validate each answer,
and retry the failures (up to `max_attempts` in all) with the failed answer and the reason
appended as a follow-up turn, so even greedy decoding gets a different prompt on a retry.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Hashable

from data_gen import prompts
from data_gen.backends.base import ChatBackend, ChatFailure, Message, SamplingParams
from data_gen.parsing import AnswerError, extract_json_object

_ANSWER_SNIPPET = 2000  # characters of a failed answer kept in the rejects file


@dataclasses.dataclass
class StepResult:
  values: dict  # key -> validated value
  failures: dict  # key -> {"step", "reason", "attempts": [{"answer", "reason"}, ...]}
  attempts: dict  # key -> number of attempts made

  def step_info(self, key) -> dict:
    return {"attempts": self.attempts[key], "ok": key in self.values}


def run_step(backend: ChatBackend, sampling: SamplingParams, step: str,
             conversations: dict[Hashable, list[Message]],
             validate: Callable[[Hashable, dict | str], object],
             json_schema: dict | None, keys: list[str] | None,
             max_attempts: int = 3) -> StepResult:
  """`validate(key, obj)` gets the parsed JSON object (or the raw text when `keys` is None, a
  free-text step), returns the value to keep, or raises AnswerError."""
  if max_attempts < 1:
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
  values, history = {}, {k: [] for k in conversations}
  attempts = {k: 0 for k in conversations}
  current = dict(conversations)
  for attempt in range(max_attempts):
    pending = [k for k in conversations if k not in values]
    if not pending:
      break
    # A new seed per attempt: with sampling, a retry draws a different answer.
    params = dataclasses.replace(sampling, seed=sampling.seed + attempt)
    answers = backend.chat([current[k] for k in pending], params, json_schema)
    if len(answers) != len(pending):
      raise RuntimeError(f"backend {backend.name} returned {len(answers)} answers for "
                         f"{len(pending)} conversations")
    for k, answer in zip(pending, answers):
      attempts[k] += 1
      if isinstance(answer, ChatFailure):
        history[k].append({"answer": None, "reason": f"backend: {answer.reason}"})
        continue  # resend the same conversation
      try:
        obj = extract_json_object(answer) if keys is not None else answer
        values[k] = validate(k, obj)
      except AnswerError as e:
        history[k].append({"answer": answer[:_ANSWER_SNIPPET], "reason": str(e)})
        if keys is not None:
          current[k] = [*conversations[k], {"role": "assistant", "content": answer},
                        prompts.retry_feedback(str(e), keys)]
  failures = {k: {"step": step, "reason": history[k][-1]["reason"], "attempts": history[k]}
              for k in conversations if k not in values}
  return StepResult(values=values, failures=failures, attempts=attempts)
