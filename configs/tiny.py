"""Deprecated: the configs moved into the package (reasonir_jax/configs/tiny.py, or
`--config=tiny`); this file goes in the next release."""
from reasonir_jax.configs.tiny import get_config  # noqa: F401
