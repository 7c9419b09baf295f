"""The ReasonIR-8B recipe: Llama-3.1-8B, bidirectional, docs/reference.md section 2 defaults."""
from reasonir_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mesh.shape = (1, -1, 1)  # FSDP over every chip.
  # Without GradCache the full 2048-query batch fits from v5p-256 up; on smaller slices set
  # --config.train.grad_cache_chunk (e.g. 64 on v5p-128): see docs/scaling.md.
  c.train.grad_cache_chunk = 0
  # Never train the 8B model on the shipped sample by accident: --config.data.sources and a
  # tokenizer (--config.init_from or --config.data.tokenizer) are required.
  c.train.require_explicit_data = True
  return c
