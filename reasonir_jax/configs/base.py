"""The base config every variant starts from: model, mesh, sharding rules, data, optimiser, training.

Variants (`tiny.py`, `llama3_8b.py`, `qwen3_8b.py`, ... beside it) call `base_config()` and
change a few fields. Every field can be overridden on the command line, e.g. `--config.optim.lr=1e-5`.
"""
import dataclasses

import ml_collections

from reasonir_jax.model.config import ModelConfig


def model_config() -> ml_collections.ConfigDict:
  """`config.model`: every field of `ModelConfig` with its default (Llama-3.1-8B dimensions,
  docs/reference.md section 1), so the two cannot drift apart. ModelConfig's field comments say
  what the switches mean: fp32 master weights with bf16 matmuls (norms and softmax always in
  fp32), `remat_policy` none/full/offload/dots/dots_no_batch, `attention` auto/xla/splash/cudnn."""
  return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))


# Logical axis -> mesh axes. Parameters: embed/vocab/heads/kv_heads/mlp/head_dim/layers.
# Activations: batch/length/act_embed/act_heads/act_kv_heads/act_mlp.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = model_config()

  # `shape` is the mesh within one slice (ICI; one -1 is filled from the devices per slice),
  # `dcn_shape` the slices across the data-centre network (one -1 is filled from the slice
  # count): the mesh is their product (sharding.make_mesh). On one slice dcn_shape is all 1s;
  # on several, the default puts only the data axis across them, so FSDP's all-gathers and
  # reduce-scatters and any tensor parallelism stay on ICI.
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), dcn_shape=(-1, 1, 1),
                                          axes=("data", "fsdp", "tensor")))
  c.sharding_rules = SHARDING_RULES

  # Initialise from a local Hugging Face directory ("" = random init).
  c.init_from = ""
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      # Comma-separated "name=glob[:weight]" entries, e.g. "public=/d/pub-*.tfrecord,hq=/d/hq-*".
      # "sample" is the small training set shipped with the package. Weights need mixing="weighted".
      sources="sample",
      # "reference" (GritLM's sampler, as ReasonIR trains): each epoch, every source shuffled and
      # cut into single-source global batches, the remainders into mixed ones, all batches
      # shuffled; sources in proportion to their size, without replacement within an epoch.
      # "weighted": each global batch's source drawn with replacement by the sources' weights.
      mixing="reference",
      # mixing="weighted" only: False draws every row's source instead of every batch's.
      single_source_batches=True,
      tokenizer="",  # "" = the model directory's tokenizer, else the shipped sample tokenizer.
      max_length=2048,
      query_max_length=2048,
      passage_max_length=2048,
      group_size=2,  # 1 positive + (group_size - 1) hard negatives per query.
      # Sequences are padded to the smallest of these that fits (capped at max_length).
      bucket_lengths=(128, 256, 512, 1024, 2048),
      # Pack several texts per row instead of padding each (no FLOPs on padding; attention stays
      # within a text): queries go into B / pack_queries_per_row rows of query_max_length, passages
      # into B*G / pack_passages_per_row rows of passage_max_length. A batch that does not fit
      # has its longest texts cut (counted in the input stats); see docs/packing.md.
      packing=False,
      pack_queries_per_row=4,
      pack_passages_per_row=2,
      shuffle_seed=0,
      skip_corrupt=False,
      num_workers=2,
      prefetch=2,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-5,
      schedule="constant",  # "constant" or "cosine", both after linear warmup.
      warmup_ratio=0.06,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=1.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      global_batch_size=2048,
      num_steps=1000,
      temperature=0.02,
      # GradCache chunk size per sub-batch (0 = off: one full-batch backward).
      grad_cache_chunk=0,
      log_every=10,
      # Compile the step for every shape the run can meet (training.step.step_shapes: one
      # with packing, one per bucket pair otherwise) before the first step, cached in
      # WORKDIR/jax_cache for restarts, so no compile stalls the run later.
      precompile=True,
      # Peak bf16 FLOP/s of one device for MFU (0 = look it up from the device kind).
      peak_flops_per_device=0.0,
      # A step whose loss or gradient norm is not finite skips its update (parameters and
      # optimiser state unchanged); this many such steps in a row stop the run with an error
      # naming their batches' rows (1 = stop at the first).
      max_consecutive_nonfinite=3,
      # Refuse to start on the shipped sample data/tokenizer (set by the 8B recipe).
      require_explicit_data=False,
  ))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500,
      # Also save once this many seconds have passed since the last save started (0 = off):
      # a spot preemption loses at most this much work.
      every_seconds=0.0,
      # Seconds between a preemption notice (SIGTERM) and the machine's end (~30 s on spot
      # VMs): a preemption save that would not commit within them is skipped.
      preemption_grace_seconds=30.0,
      keep=3,
      # The step waits only for the device-to-host copy; the write runs in the background.
      async_save=True,
      # The fast tier: each process's own shards on a disk of its own host ("" = off), read
      # back first by a restart on the same hosts (training/local_checkpoint.py). A deleted or
      # replaced host falls back to the checkpoints above.
      local_dir="",
      local_every_steps=0,
      local_every_seconds=0.0,
      local_keep=1,
  ))
  return c


def get_config() -> ml_collections.ConfigDict:
  """The base config (defaults of docs/reference.md section 2)."""
  return base_config()
