"""The LLM backends by name, each imported only when asked for (a backend's heavy dependency,
vLLM or torch, loads only with it):

  openai        any OpenAI-compatible endpoint (e.g. `vllm serve`)       backends/openai.py
  transformers  a local Hugging Face causal LM, CPU or GPU                backends/transformers.py
  vllm          vLLM's offline batch engine in this process (GPU)         backends/vllm_offline.py
  vllm-async    vLLM's async engine in this process, continuous submission backends/vllm_async.py
"""
from __future__ import annotations

import importlib

from reasonir_jax.llm.types import ChatBackend

# kind -> (module under reasonir_jax.llm.backends, class name)
_REGISTRY = {
    "openai": ("openai", "OpenAIBackend"),
    "transformers": ("transformers", "TransformersBackend"),
    "vllm": ("vllm_offline", "VLLMBackend"),
    "vllm-async": ("vllm_async", "AsyncVLLMBackend"),
}
BACKEND_KINDS = tuple(_REGISTRY)


def backend_class(kind: str) -> type[ChatBackend]:
  """The backend class of `kind` (its module imported now)."""
  if kind not in _REGISTRY:
    raise ValueError(f"unknown backend {kind!r}: choose {', '.join(BACKEND_KINDS)}")
  module, name = _REGISTRY[kind]
  return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_backend(kind: str, **kwargs) -> ChatBackend:
  """`kind` is one of BACKEND_KINDS; kwargs go to that backend's constructor."""
  return backend_class(kind)(**kwargs)
