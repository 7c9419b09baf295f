"""Deprecated alias, kept for one release: the backend types are `reasonir_jax.llm.types` and
`make_backend` is `reasonir_jax.llm.backends.make_backend`."""
from reasonir_jax.llm.backends import make_backend  # noqa: F401
from reasonir_jax.llm.types import *  # noqa: F401,F403
from reasonir_jax.llm.types import FAILURE_KINDS, Message, cut_at_stop  # noqa: F401
