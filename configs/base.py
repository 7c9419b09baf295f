"""Deprecated: the configs moved into the package (reasonir_jax/configs/base.py, or
`--config=base`); this file goes in the next release."""
from reasonir_jax.configs.base import get_config  # noqa: F401
