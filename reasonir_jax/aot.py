"""Deprecated: moved to reasonir_jax.scale.aot (`python -m reasonir_jax.scale.aot`); this name
goes in the next release."""
import sys

from reasonir_jax._compat import alias

_module = alias(__name__, "reasonir_jax.scale.aot")

if __name__ == "__main__":
  sys.exit(_module.main())
