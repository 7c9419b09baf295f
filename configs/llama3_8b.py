"""Deprecated: the configs moved into the package (reasonir_jax/configs/llama3_8b.py, or
`--config=llama3_8b`); this file goes in the next release."""
from reasonir_jax.configs.llama3_8b import get_config  # noqa: F401
