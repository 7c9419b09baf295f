"""The ReasonIR-8B recipe: Llama-3.1-8B, bidirectional, docs/reference.md section 2 defaults."""
from reasonir_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.mesh.shape = (1, -1, 1)  # FSDP over every chip of a slice;
  c.mesh.dcn_shape = (-1, 1, 1)  # data parallelism across slices (multi-slice, over DCN).
  # Layer inputs wait in host memory for the backward pass (64 GiB per chip on v5p-128: about
  # 1.3 GiB/s each way over a 48 s step at 40% MFU). That lets the full 2048-query batch run
  # without GradCache from v5p-128 up (remat `full` needs v5p-256); docs/scaling.md.
  c.model.remat_policy = "offload"
  # GradCache (--config.train.grad_cache_chunk, e.g. 32 on v5p-64) for smaller slices.
  c.train.grad_cache_chunk = 0
  # Never train the 8B model on the shipped sample by accident: --config.data.sources and a
  # tokenizer (--config.init_from or --config.data.tokenizer) are required.
  c.train.require_explicit_data = True
  # Three buckets, so 3 x 3 = 9 step shapes, all compiled before step 1 (train.precompile; ~1.5
  # to 2 min each for 8B, then from WORKDIR/jax_cache on a restart). The base's five buckets
  # would mean 25 compiles, ~50 minutes of an idle pod. Packing (one shape) stays opt-in: a
  # batch that overflows its token budget has its longest texts cut, which changes the data.
  c.data.bucket_lengths = (512, 1024, 2048)
  # every_steps=500 is ~6.7 h at ~48 s/step on v5p-128: on spot capacity a preemption would
  # lose hours. Save at least every 10 minutes (docs/scaling.md, "Preemption").
  c.checkpoint.every_seconds = 600.0
  # The local tier (each host's ~6 GB share on its own disk, kept across a reboot under /var/tmp)
  # every 5 minutes: a crashed process or a maintenance restart then loses at most 5 minutes, for
  # a projected ~1% stall of the step (docs/scaling.md, "Preemption"). A deleted slice has no
  # local disk left and restarts from the persistent checkpoints.
  c.checkpoint.local_dir = "/var/tmp/reasonir_jax/local_checkpoints"
  c.checkpoint.local_every_seconds = 300.0
  return c
