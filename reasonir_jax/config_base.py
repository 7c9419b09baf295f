"""Deprecated: the base config moved to reasonir_jax.configs.base; this name goes in the next
release."""
from reasonir_jax._compat import alias

alias(__name__, "reasonir_jax.configs.base")
