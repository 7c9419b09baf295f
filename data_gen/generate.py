"""One generation step over a batch: send every conversation, parse and validate each answer,
and retry the failures (up to `max_attempts` in all) with the failed answer and the reason
appended as a follow-up turn, so even greedy decoding gets a different prompt on a retry.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable, Hashable

from data_gen import prompts
from data_gen.parsing import AnswerError, extract_json_object
from reasonir_jax.llm.types import (ChatBackend, ChatFailure, Message, SamplingParams,
                                    StreamingChatBackend)

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
  free-text step), returns the value to keep, or raises AnswerError.

  A streaming backend gets every request as its own submission and each retry is submitted
  the moment its answer fails, into the same stream; other backends get one `chat` call per
  round over the inputs still pending."""
  if max_attempts < 1:
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
  state = _StepState(conversations, validate, keys)
  if isinstance(backend, StreamingChatBackend):
    _run_streaming(backend, sampling, json_schema, max_attempts, state)
  else:
    _run_rounds(backend, sampling, json_schema, max_attempts, state)
  failures = {k: {"step": step, "reason": state.history[k][-1]["reason"],
                  "kind": state.kinds[k], "attempts": state.history[k]}
              for k in conversations if k not in state.values}
  return StepResult(values=state.values, failures=failures, attempts=state.attempts)


class _StepState:
  """Answers, attempts and the next conversation to send, per key."""

  def __init__(self, conversations, validate, keys):
    self.conversations = conversations
    self.validate = validate
    self.keys = keys
    self.values: dict = {}
    self.history = {k: [] for k in conversations}
    self.attempts = {k: 0 for k in conversations}
    self.kinds: dict = {}  # key -> failure kind of the last attempt
    self.current = dict(conversations)
    self.final: set = set()  # failed for good (not worth another attempt)

  def record(self, k, answer) -> None:
    self.attempts[k] += 1
    if isinstance(answer, ChatFailure):
      self.history[k].append({"answer": None, "reason": f"{answer.kind}: {answer.reason}"})
      self.kinds[k] = answer.kind
      if answer.kind == "prompt_too_long":
        self.final.add(k)  # the same prompt will not fit next time either
      # "backend" and "length": resend the same conversation with a new seed (a truncated
      # answer is not appended: it would only make the prompt longer).
      return
    try:
      obj = extract_json_object(answer, self.keys) if self.keys is not None else answer
      self.values[k] = self.validate(k, obj)
    except AnswerError as e:
      self.history[k].append({"answer": answer[:_ANSWER_SNIPPET], "reason": str(e)})
      self.kinds[k] = "invalid"
      if self.keys is not None:
        self.current[k] = [*self.conversations[k], {"role": "assistant", "content": answer},
                           prompts.retry_feedback(str(e), self.keys)]

  def wants_retry(self, k, max_attempts: int) -> bool:
    return k not in self.values and k not in self.final and self.attempts[k] < max_attempts


def _seeded(sampling: SamplingParams, attempt: int) -> SamplingParams:
  # A new seed per attempt: with sampling, a retry draws a different answer.
  return dataclasses.replace(sampling, seed=sampling.seed + attempt)


def _run_rounds(backend, sampling, json_schema, max_attempts, state: _StepState) -> None:
  for attempt in range(max_attempts):
    pending = [k for k in state.conversations if state.wants_retry(k, max_attempts)]
    if not pending:
      break
    answers = backend.chat([state.current[k] for k in pending], _seeded(sampling, attempt),
                           json_schema)
    if len(answers) != len(pending):
      raise RuntimeError(f"backend {backend.name} returned {len(answers)} answers for "
                         f"{len(pending)} conversations")
    for k, answer in zip(pending, answers):
      state.record(k, answer)


def _run_streaming(backend, sampling, json_schema, max_attempts, state: _StepState) -> None:
  in_flight = {}

  def send(k):
    future = backend.submit(state.current[k], _seeded(sampling, state.attempts[k]), json_schema)
    in_flight[future] = k

  for k in state.conversations:
    send(k)
  while in_flight:
    done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in done:
      k = in_flight.pop(future)
      state.record(k, future.result())
      if state.wants_retry(k, max_attempts):
        send(k)
