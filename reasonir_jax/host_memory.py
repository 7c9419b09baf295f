"""Deprecated: moved to reasonir_jax.scale.host_memory; this name goes in the next release."""
from reasonir_jax._compat import alias

alias(__name__, "reasonir_jax.scale.host_memory")
