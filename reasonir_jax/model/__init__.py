"""The ReasonIR encoder: a bidirectional Llama-3.1 stack and mean pooling.

`embed(model, input_ids, attention_mask, pool_mask)` is encode + pool: the L2-normalised
embedding of each text (inputs from `reasonir_jax.tokenization.pad_batch`).
"""
from reasonir_jax.model.config import ModelConfig
from reasonir_jax.model.llama import LlamaEncoder
from reasonir_jax.model.pooling import mean_pool

__all__ = ["ModelConfig", "LlamaEncoder", "mean_pool", "embed"]


def embed(model: LlamaEncoder, input_ids, attention_mask, pool_mask):
  """[b, l] int inputs -> [b, d] float32 L2-normalised embeddings."""
  hidden_bld = model(input_ids, attention_mask)
  return mean_pool(hidden_bld, pool_mask)
