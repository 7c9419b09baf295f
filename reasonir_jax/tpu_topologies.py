"""Deprecated: moved to reasonir_jax.scale.tpu_topologies (`python -m
reasonir_jax.scale.tpu_topologies`); this name goes in the next release."""
import sys

from reasonir_jax._compat import alias

_module = alias(__name__, "reasonir_jax.scale.tpu_topologies")

if __name__ == "__main__":
  sys.exit(_module._main(sys.argv[1:]))
