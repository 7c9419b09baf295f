"""The backend interface every pipeline (and the evaluation's rewriting and reranking) uses."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 0.0
  top_p: float = 1.0
  max_tokens: int = 1536
  seed: int = 0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class ChatFailure:
  """A request that failed for good (after the backend's own retries); never raised per item."""
  reason: str


class ChatBackend(abc.ABC):
  """Generates one answer per conversation, in order."""

  name: str = "base"
  model: str = ""

  @abc.abstractmethod
  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    """`json_schema`, when given, asks for structured JSON output where the backend supports it;
    callers still parse and validate every answer."""

  def close(self) -> None:
    pass


def make_backend(kind: str, **kwargs) -> ChatBackend:
  """`kind` is "vllm", "openai" or "transformers"; kwargs go to that backend's constructor."""
  if kind == "openai":
    from data_gen.backends.openai_http import OpenAIBackend
    return OpenAIBackend(**kwargs)
  if kind == "transformers":
    from data_gen.backends.hf_local import TransformersBackend
    return TransformersBackend(**kwargs)
  if kind == "vllm":
    from data_gen.backends.vllm_offline import VLLMBackend
    return VLLMBackend(**kwargs)
  raise ValueError(f"unknown backend {kind!r}: choose vllm, openai or transformers")
