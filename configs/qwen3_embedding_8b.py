"""Deprecated: the configs moved into the package (reasonir_jax/configs/qwen3_embedding_8b.py, or
`--config=qwen3_embedding_8b`); this file goes in the next release."""
from reasonir_jax.configs.qwen3_embedding_8b import get_config  # noqa: F401
