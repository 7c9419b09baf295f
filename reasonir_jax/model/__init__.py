"""The encoder: a Llama-3 or Qwen3 stack, bidirectional or causal, pooled over its marked tokens
(the text's mean, or its last token) and L2-normalised.

`embed(model, input_ids, attention_mask, pool_mask)` is encode + pool: the L2-normalised
embedding of each padded row (inputs from `reasonir_jax.tokenization.pad_batch`).
`embed_packed(model, input_ids, segment_ids, positions, pool_ids, num_texts)` does the same for
packed rows holding several texts each (inputs from `reasonir_jax.packing.packed_arrays`).
"""
from reasonir_jax.model.config import ModelConfig
from reasonir_jax.model.llama import LlamaEncoder
from reasonir_jax.model.pooling import mean_pool, segment_mean_pool

__all__ = ["ModelConfig", "LlamaEncoder", "mean_pool", "segment_mean_pool", "embed",
           "embed_packed"]


def embed(model: LlamaEncoder, input_ids, attention_mask, pool_mask):
  """[b, l] int inputs -> [b, d] float32 L2-normalised embeddings."""
  hidden_bld = model(input_ids, attention_mask)
  return mean_pool(hidden_bld, pool_mask)


def embed_packed(model: LlamaEncoder, input_ids, segment_ids, positions, pool_ids,
                 num_texts: int, max_segments: int | None = None):
  """[rows, l] packed int inputs -> [num_texts, d] float32 L2-normalised embeddings.

  `max_segments` (static): at most this many texts in one row; default num_texts, which no row
  can exceed (callers that know a tighter bound save the cudnn backend memory)."""
  hidden_bld = model(input_ids, segment_ids_bl=segment_ids, positions_bl=positions,
                     max_segments=num_texts if max_segments is None else max_segments)
  return segment_mean_pool(hidden_bld, pool_ids, num_texts)
