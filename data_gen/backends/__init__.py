"""Deprecated alias, kept for one release: the LLM backends now live in `reasonir_jax.llm`
(types in `reasonir_jax.llm.types`, backends by name in `reasonir_jax.llm.backends`). Import
from there; this package only re-exports them (and its old submodules are the new modules)."""
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatBackend, ChatFailure, SamplingParams

__all__ = ["ChatBackend", "ChatFailure", "SamplingParams", "make_backend"]
