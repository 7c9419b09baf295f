"""The ReasonIR recipe on Qwen3-8B: bidirectional attention, GritLM template (Qwen's tokenizer has
no BOS, so none), mean pooling; the training set-up of llama3_8b.py.

The dimensions are Qwen3-8B's config.json; with --config.init_from=DIR they are read from DIR
(as for every base), so Qwen3-0.6B to 4B and the Qwen3-Embedding checkpoints train with this file
too (their tied embeddings are taken from the config).
"""
from reasonir_jax.configs import llama3_8b


def get_config():
  c = llama3_8b.get_config()
  c.model.update(dict(
      model_type="qwen3",
      vocab_size=151936,
      hidden_size=4096,
      intermediate_size=12288,
      num_layers=36,
      num_heads=32,
      num_kv_heads=8,
      head_dim=128,
      rms_norm_eps=1e-6,
      rope_theta=1000000.0,
      rope_type="default",
      max_position_embeddings=40960,
      bos_token_id=151643,
      eos_token_id=151645,
      pad_token_id=151643,  # <|endoftext|>
      tie_word_embeddings=False,
  ))
  return c
