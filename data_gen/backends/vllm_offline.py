"""Deprecated alias, kept for one release: this module is `reasonir_jax.llm.backends.vllm_offline`."""
import sys

from reasonir_jax.llm.backends import vllm_offline as _moved

# The old name is the new module itself (not a copy), so patching either patches both.
sys.modules[__name__] = _moved
