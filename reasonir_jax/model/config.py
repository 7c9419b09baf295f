"""`ModelConfig`: the encoder's dimensions and switches, from our ConfigDict or an HF config.json.

Two families share the model: Llama-3 and Qwen3 (`model_type`; Qwen3 adds a per-head RMSNorm on
q and k, `qk_norm`). Reads both Hugging Face layouts: transformers 5 (`rope_parameters` holding
`rope_theta` and the scaling fields, `head_dim`, `dtype`) and the published one (top-level
`rope_theta`, `rope_scaling`, `torch_dtype`). `to_hf_dict()` writes a LlamaConfig or Qwen3Config
dict transformers 5 loads.

The embedding recipe is three switches (`RECIPES` names the two we train): attention `causal`
or bidirectional, the prompt `template` (reasonir_jax.tokenization) and `pooling`, "mean" over
the text tokens or "last_token". An HF import keeps the recipe defaults; callers pass the recipe
as overrides.

Its defaults (Llama-3.1-8B, docs/reference.md section 1) are `config.model`'s
(reasonir_jax/configs/base.py). Importing it does not import jax: config files build from it
before the AOT report sets up libtpu.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ROPE_TYPES = ("llama3", "default")
REMAT_POLICIES = ("none", "full", "offload", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
MODEL_TYPES = ("llama", "qwen3")
TEMPLATES = ("reasonir", "qwen3_embedding")
POOLINGS = ("mean", "last_token")
# The recipes: ReasonIR's (GritLM template, bidirectional, mean; the default) and
# Qwen3-Embedding's (instruction format with EOS appended, causal, last token).
RECIPES = {
    "reasonir": dict(template="reasonir", causal=False, pooling="mean"),
    "qwen3_embedding": dict(template="qwen3_embedding", causal=True, pooling="last_token"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 128256
  hidden_size: int = 4096
  intermediate_size: int = 14336
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  rope_type: str = "llama3"  # "llama3" or "default" (no scaling)
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  max_position_embeddings: int = 131072
  bos_token_id: int = 128000
  eos_token_id: int = 128001
  pad_token_id: int = 128004
  # fp32 master weights; bf16 matmuls. Norms and softmax always run in fp32.
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  scan_layers: bool = True
  # "none", "full" (save nothing), "offload" (as full, layer inputs kept in host memory; TPU),
  # "dots" (save matmul outputs), "dots_no_batch" (weight matmuls only).
  remat_policy: str = "full"
  # "auto" (splash on TPU, cudnn on NVIDIA GPU, xla elsewhere), "xla", "splash", "cudnn"
  # (reasonir_jax.model.attention).
  attention: str = "auto"
  # "llama" or "qwen3" (per-head q/k RMSNorm, `qk_norm`); taken from init_from's config.json.
  model_type: str = "llama"
  tie_word_embeddings: bool = False  # recorded for export: the encoder has no LM head
  # The embedding recipe (RECIPES): ReasonIR's bidirectional attention, GritLM template and mean
  # pooling, or Qwen3-Embedding's causal attention, instruction format ("qwen3_embedding": EOS
  # appended) and last-token pooling (reasonir_jax/configs/qwen3_embedding_8b.py).
  causal: bool = False
  template: str = "reasonir"  # reasonir | qwen3_embedding (reasonir_jax.tokenization)
  pooling: str = "mean"  # mean | last_token

  def __post_init__(self):
    for name, allowed in (("model_type", MODEL_TYPES), ("template", TEMPLATES),
                          ("pooling", POOLINGS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"model.rope_type={self.rope_type!r} is not supported (one of {ROPE_TYPES})")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"model.attention={self.attention!r} is not one of "
                       f"{ATTENTION_IMPLEMENTATIONS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {DTYPES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} is not a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for RoPE")

  @property
  def qk_norm(self) -> bool:
    """Qwen3's RMSNorm over head_dim on q and k (each head alike) before RoPE."""
    return self.model_type == "qwen3"

  @property
  def jnp_param_dtype(self):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_config(cls, model_config: Mapping[str, Any]) -> "ModelConfig":
    """From `config.model` (an ml_collections ConfigDict or a plain dict)."""
    d = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"config.model has unknown fields {unknown}")
    return cls(**d)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "ModelConfig":
    """From a Hugging Face Llama or Qwen3 config.json dict (either layout); `overrides` replace
    fields (the recipe's among them)."""
    model_type = d.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"config.json: model_type={model_type!r} is not supported (one of "
                       f"{MODEL_TYPES})")
    for key, ok in (("attention_bias", False), ("mlp_bias", False), ("use_sliding_window", False)):
      if d.get(key, ok) != ok:
        raise ValueError(f"config.json: {key}={d[key]!r} is not supported")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"config.json: hidden_act={d['hidden_act']!r} is not supported (need 'silu')")

    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    rope_theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"config.json: rope type {rope_type!r} is not supported (one of {ROPE_TYPES})")
    num_heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = d.get("head_dim") or hidden // num_heads
    dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
      raise ValueError(f"config.json: dtype {dtype!r} is not supported (one of {DTYPES})")

    def first_id(v, default):
      if isinstance(v, (list, tuple)):
        v = v[0] if v else None
      return default if v is None else int(v)

    eos = first_id(d.get("eos_token_id"), 1)
    kw = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        rope_type=rope_type,
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        bos_token_id=first_id(d.get("bos_token_id"), 0),
        eos_token_id=eos,
        pad_token_id=first_id(d.get("pad_token_id"), eos),
        param_dtype=dtype,
        dtype=dtype,
        model_type=model_type,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
    )
    if rope_type == "llama3":
      for ours, theirs in (("rope_factor", "factor"), ("rope_low_freq_factor", "low_freq_factor"),
                           ("rope_high_freq_factor", "high_freq_factor"),
                           ("rope_original_max_position_embeddings",
                            "original_max_position_embeddings")):
        if theirs not in rope:
          raise ValueError(f"config.json: llama3 rope scaling lacks {theirs!r}")
        kw[ours] = type(getattr(cls, ours))(rope[theirs])
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self, dtype: str | None = None) -> dict[str, Any]:
    """A transformers-5 LlamaConfig or Qwen3Config dict for a bare `LlamaModel`/`Qwen3Model`."""

    rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
    if self.rope_type == "llama3":
      rope.update(factor=self.rope_factor, low_freq_factor=self.rope_low_freq_factor,
                  high_freq_factor=self.rope_high_freq_factor,
                  original_max_position_embeddings=self.rope_original_max_position_embeddings)
    family = {"llama": "LlamaModel", "qwen3": "Qwen3Model"}[self.model_type]
    d = {
        "architectures": [family],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "initializer_range": 0.02,
        "use_cache": False,
        "dtype": dtype or self.param_dtype,
    }
    if self.model_type == "qwen3":
      del d["mlp_bias"]  # Qwen3Config has none
      d.update(use_sliding_window=False, sliding_window=None)
    return d
