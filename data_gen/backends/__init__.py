"""LLM backends behind one interface: `vllm` (offline, GPU), `openai` (any OpenAI-compatible
endpoint, e.g. `vllm serve`), `transformers` (local HF causal LM, CPU or GPU)."""
from data_gen.backends.base import ChatBackend, ChatFailure, SamplingParams, make_backend

__all__ = ["ChatBackend", "ChatFailure", "SamplingParams", "make_backend"]
