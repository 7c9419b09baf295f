"""A tiny model and short run that train on 2 CPU cores in a few minutes."""
from reasonir_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(dict(
      vocab_size=2048,  # the shipped sample tokenizer's vocabulary
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      rope_theta=10000.0,
      rope_original_max_position_embeddings=256,
      max_position_embeddings=2048,
      bos_token_id=0,
      eos_token_id=1,
      pad_token_id=2,
      param_dtype="float32",
      dtype="float32",
      scan_layers=False,  # 2 layers: a loop compiles as fast as a scan and runs ~10% faster on CPU
      remat_policy="none",
  ))
  c.mesh.shape = (-1, 1, 1)
  c.data.max_length = 128
  c.data.query_max_length = 128
  c.data.passage_max_length = 128
  c.data.bucket_lengths = (32, 64, 128)
  c.data.num_workers = 0
  c.optim.lr = 1e-3
  c.optim.warmup_ratio = 0.1
  c.train.global_batch_size = 16
  c.train.num_steps = 60
  c.train.temperature = 0.05
  c.train.log_every = 5
  # A CPU demo compiles the shapes it meets as it meets them (9 bucket pairs up front would
  # double its run time).
  c.train.precompile = False
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 2
  return c
