"""`Encoder`: load a ReasonIR model (HF directory or training workdir) and embed texts.

    enc = Encoder.from_pretrained("path/to/hf_dir")
    q = enc.encode(queries, instruction="Given a biology post, retrieve relevant passages ...")
    d = enc.encode(documents)          # documents get no instruction
    scores = q @ d.T                   # cosine: embeddings are L2-normalised

Texts are sorted by length and padded to a few bucket lengths (powers of two), and the batch
to a fixed size, so the jitted encoder compiles once per bucket, not per batch.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reasonir_jax import sharding as shd
from reasonir_jax.model import LlamaEncoder, ModelConfig, embed
from reasonir_jax.tokenization import PromptTokenizer, bucket_length, load_tokenizer, pad_batch

MIN_BUCKET = 32


def bucket_lengths(max_length: int) -> tuple[int, ...]:
  """Powers of two from 32 up to max_length, plus max_length itself."""
  out, b = [], MIN_BUCKET
  while b < max_length:
    out.append(b)
    b *= 2
  out.append(max_length)
  return tuple(out)


class Encoder:
  """Embeds texts with a LlamaEncoder + mean pooling; see the module docstring."""

  def __init__(self, model: LlamaEncoder, tokenizer, model_cfg: ModelConfig, mesh=None,
               rules=None):
    if mesh is not None and rules is None:
      from reasonir_jax.config_base import SHARDING_RULES
      rules = SHARDING_RULES
    self.model = model
    self.model_cfg = model_cfg
    self.mesh = mesh
    self.rules = rules
    if isinstance(tokenizer, PromptTokenizer):
      self.prompt_tokenizer = tokenizer
    else:
      self.prompt_tokenizer = PromptTokenizer(tokenizer)
    if mesh is not None:
      shd.shard_model(model, mesh, rules)
      self._dp = shd.data_parallel_size(mesh, rules)
      self._input_sharding = shd.batch_sharding(mesh, rules)
    else:
      self._dp = 1
      self._input_sharding = None
    graphdef, self._state = nnx.split(model)

    def run(state, input_ids, attention_mask, pool_mask):
      return embed(nnx.merge(graphdef, state), input_ids, attention_mask, pool_mask)

    self._embed = jax.jit(run)

  @property
  def tokenizer(self):
    return self.prompt_tokenizer.tokenizer

  @classmethod
  def from_pretrained(cls, path: str, dtype: str = "bfloat16", mesh=None, rules=None,
                      show_progress: bool = True) -> "Encoder":
    """Loads an HF directory, or a training workdir (one holding `checkpoints/`)."""
    if dtype not in ("bfloat16", "float32"):
      raise ValueError(f"Encoder.from_pretrained: dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Encoder.from_pretrained: {path} is not a directory")
    if os.path.isdir(os.path.join(path, "checkpoints")):
      return cls._from_workdir(path, dtype, mesh, rules)
    from reasonir_jax.hf.load import load_hf
    model, cfg = load_hf(path, mesh=mesh, rules=rules, show_progress=show_progress,
                         param_dtype=dtype, dtype=dtype, remat_policy="none")
    return cls(model, load_tokenizer(path), cfg, mesh=mesh, rules=rules)

  @classmethod
  def _from_workdir(cls, workdir: str, dtype: str, mesh, rules) -> "Encoder":
    try:
      from reasonir_jax.training.checkpoint import load_params_for_export
    except ImportError as e:
      raise RuntimeError(f"{workdir} is a training workdir (it has checkpoints/), but "
                         f"reasonir_jax.training.checkpoint.load_params_for_export cannot be "
                         f"imported: {e}") from e
    params, model_cfg, tokenizer_path = load_params_for_export(workdir, step=None)
    if not isinstance(model_cfg, ModelConfig):
      model_cfg = ModelConfig.from_config(model_cfg)
    from reasonir_jax.hf.save import normalise_layers, pure_params
    pure, scanned = normalise_layers(pure_params(params))
    cfg = model_cfg.replace(param_dtype=dtype, dtype=dtype, remat_policy="none",
                            scan_layers=scanned)
    model = nnx.eval_shape(lambda: LlamaEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    np_dtype = jax.numpy.dtype(dtype)
    pure = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(np_dtype), pure)
    nnx.replace_by_pure_dict(state, pure)
    model = nnx.merge(graphdef, state)
    return cls(model, load_tokenizer(tokenizer_path), cfg, mesh=mesh, rules=rules)

  def encode(self, texts: Sequence[str], instruction: str | None | Sequence[str | None] = None,
             batch_size: int = 32, max_length: int = 2048,
             show_progress: bool | None = None) -> np.ndarray:
    """[len(texts), hidden] float32 L2-normalised embeddings, in the caller's order."""
    if isinstance(texts, str):
      raise TypeError("Encoder.encode takes a list of texts, not a single string")
    texts = list(texts)
    hidden = self.model_cfg.hidden_size
    if not texts:
      return np.zeros((0, hidden), np.float32)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = self.prompt_tokenizer.encode(texts, instruction, max_length)
    for i, e in enumerate(encoded):
      if e is None:
        raise ValueError(f"text {i}: the instruction prefix alone reaches max_length={max_length}")
    # Fixed batch (a multiple of the data-parallel size) so shapes repeat across batches.
    batch = -(-batch_size // self._dp) * self._dp
    buckets = bucket_lengths(max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i][0]))
    out = np.zeros((len(texts), hidden), np.float32)
    starts = range(0, len(order), batch)
    if show_progress is None:
      show_progress = len(starts) > 8
    for s in tqdm(starts, desc="encode", disable=not show_progress, leave=False):
      idx = order[s: s + batch]
      rows = [encoded[i] for i in idx]
      length = bucket_length(max(len(r[0]) for r in rows), buckets, max_length)
      rows += [([self.prompt_tokenizer.pad_id], 1)] * (batch - len(rows))  # filler rows
      arrays = pad_batch(rows, length, self.prompt_tokenizer.pad_id)
      inputs = [arrays["input_ids"], arrays["attention_mask"], arrays["pool_mask"]]
      if self._input_sharding is not None:
        inputs = [jax.device_put(x, self._input_sharding) for x in inputs]
      emb_bd = self._embed(self._state, *inputs)
      out[idx] = np.asarray(jax.device_get(emb_bd))[: len(idx)]
    return out

  def save_pretrained(self, path: str, dtype: str | None = None,
                      max_shard_bytes: int | None = None) -> str:
    """Writes an HF `LlamaModel` directory (config, safetensors, tokenizer)."""
    from reasonir_jax.hf.save import MAX_SHARD_BYTES, save_hf
    return save_hf(self._state, self.model_cfg, path, tokenizer=self.tokenizer, dtype=dtype,
                   max_shard_bytes=max_shard_bytes or MAX_SHARD_BYTES)
