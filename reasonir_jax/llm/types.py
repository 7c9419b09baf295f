"""The request and result types of every LLM backend: messages, `SamplingParams`, `ChatFailure`,
and the `ChatBackend` / `StreamingChatBackend` interface the data_gen pipelines and the
evaluation's rewriting, reranking and RAG stages call."""
from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
from typing import Any, Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 0.0
  top_p: float = 1.0
  max_tokens: int = 1536
  seed: int = 0
  # OpenAI semantics (as in vLLM): logit -= frequency_penalty * count + presence_penalty * (count
  # > 0), counting the tokens generated so far (not the prompt's). 0 is off.
  frequency_penalty: float = 0.0
  presence_penalty: float = 0.0
  # Strings that end an answer where they first appear; the answer is the text before it (the
  # stop string itself left out), as vLLM and OpenAI return it. Empty: none.
  stop: tuple[str, ...] = ()

  def __post_init__(self):
    stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
    if not all(isinstance(s, str) and s for s in stop):
      raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
    object.__setattr__(self, "stop", stop)

  def penalties(self) -> dict[str, float]:
    """The penalties that are on, by name (what a backend passes on; nothing when off)."""
    return {k: getattr(self, k) for k in _PENALTIES if getattr(self, k)}

  def to_dict(self) -> dict[str, Any]:
    # The penalties and stop strings came later: when off they are left out, so the settings of
    # earlier data_gen runs (checked on resume) and the keys of earlier answer caches stay the same.
    d = dataclasses.asdict(self)
    d["stop"] = list(self.stop)
    return {k: v for k, v in d.items() if k not in _OPTIONAL or v}


_PENALTIES = ("frequency_penalty", "presence_penalty")
_OPTIONAL = (*_PENALTIES, "stop")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """The text before the first occurrence of any stop string (all of it when none occurs)."""
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
  return text[:cut]


# ChatFailure kinds. "prompt_too_long" and "length" are their own reject reasons: the first is
# never retried (the prompt will not shrink), the second is resent without the truncated answer.
FAILURE_KINDS = ("backend", "prompt_too_long", "length")


@dataclasses.dataclass
class ChatFailure:
  """A request that failed for good (after the backend's own retries); never raised per item.
  For kind "length", `text` holds the answer as far as it got (for callers that, like the public
  code they follow, parse a cut-off answer); None when the backend does not give it."""
  reason: str
  kind: str = "backend"
  text: str | None = None

  def __post_init__(self):
    if self.kind not in FAILURE_KINDS:
      raise ValueError(f"ChatFailure kind {self.kind!r} not in {FAILURE_KINDS}")


class ChatBackend(abc.ABC):
  """Generates one answer per conversation, in order."""

  name: str = "base"
  model: str = ""

  @abc.abstractmethod
  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    """`json_schema`, when given, asks for structured JSON output where the backend supports it;
    callers still parse and validate every answer."""

  # Whether `complete` works: a raw prompt in, its continuation out, no chat template.
  raw_completion: bool = False

  def complete(self, prompts: Sequence[str], sampling: SamplingParams, *,
               keep_truncated: bool = False) -> list[str | ChatFailure]:
    """Continues each prompt string as it is (no chat template, as a completion endpoint or
    vLLM's `generate` does). With `keep_truncated`, an answer cut off at `max_tokens` is
    returned as its text rather than a ChatFailure of kind "length" (for callers that, like
    the public code they follow, parse whatever came back)."""
    raise NotImplementedError(f"the {self.name} backend has no raw-completion path")

  def close(self) -> None:
    pass


class StreamingChatBackend(ChatBackend):
  """A backend that takes requests one at a time and answers them as they finish (many in
  flight), so callers can keep it saturated and re-queue retries into the same stream."""

  @abc.abstractmethod
  def submit(self, messages: Sequence[Message], sampling: SamplingParams,
             json_schema: dict | None = None) -> "concurrent.futures.Future":
    """A future resolving to the answer text or a ChatFailure (never an exception)."""

  def submit_completion(self, prompt: str, sampling: SamplingParams, *,
                        keep_truncated: bool = False) -> "concurrent.futures.Future":
    """`complete` for one raw prompt, as a future (see `ChatBackend.complete`)."""
    raise NotImplementedError(f"the {self.name} backend has no raw-completion path")

  def chat(self, conversations, sampling, json_schema=None):
    futures = [self.submit(c, sampling, json_schema) for c in conversations]
    return [f.result() for f in futures]

  def complete(self, prompts, sampling, *, keep_truncated=False):
    futures = [self.submit_completion(p, sampling, keep_truncated=keep_truncated)
               for p in prompts]
    return [f.result() for f in futures]
