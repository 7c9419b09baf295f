"""Fine-tuning a Qwen3-Embedding checkpoint in its own recipe: causal attention, its instruction
format (queries `Instruct: {task}\nQuery:{query}`, documents plain, `<|endoftext|>` appended) and
last-token pooling. Needs --config.init_from=DIR (Qwen3-Embedding-0.6B, 4B or 8B: the dimensions
come from DIR's config.json); the rest is qwen3_8b.py.
"""
from reasonir_jax.configs import qwen3_8b
from reasonir_jax.model.config import RECIPES


def get_config():
  c = qwen3_8b.get_config()
  c.model.update(RECIPES["qwen3_embedding"])
  c.model.vocab_size = 151665  # Qwen3-Embedding's embedding rows
  c.model.eos_token_id = 151643
  return c
