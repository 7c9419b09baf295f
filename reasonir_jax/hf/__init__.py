"""Hugging Face checkpoint import/export for the encoder (one mapping table, both directions)."""
from reasonir_jax.hf.load import load_hf, read_hf_config
from reasonir_jax.hf.save import save_hf

__all__ = ["load_hf", "save_hf", "read_hf_config"]
