"""`Encoder`: load a ReasonIR model (HF directory or training workdir) and embed texts.

The model's recipe (ModelConfig: template, causal attention, pooling) decides the prompts and the
pooled tokens: ReasonIR's by default, Qwen3-Embedding's for its checkpoints and our exports of
its recipe (reasonir_jax.hf.load.read_recipe), or `recipe=` by name.

    enc = Encoder.from_pretrained("path/to/hf_dir")
    q = enc.encode(queries, instruction="Given a biology post, retrieve relevant passages ...")
    d = enc.encode(documents)          # documents get no instruction
    scores = q @ d.T                   # cosine: embeddings are L2-normalised

Texts are packed several to a row (reasonir_jax.packing), with a fixed token budget per device
call, so the jitted encoder compiles one shape per encode() and spends no FLOPs on padding. With
`packing=False` texts are sorted by length and padded to a few bucket lengths (powers of two
and the 1.5x points between them), and the batch to a fixed size: one compile per bucket. When
sorted padded batches are estimated to cost less than the packed rows (near-equal lengths),
packed encoding runs the padded path. `budget_length=` (or `encode_by_length`) also keeps the
tokens of one call near batch_size x budget_length when texts run longer than that.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reasonir_jax import sharding as shd
from reasonir_jax.model import LlamaEncoder, ModelConfig, embed, embed_packed
from reasonir_jax.model.config import RECIPES
from reasonir_jax.packing import pack_lengths, packed_arrays
from reasonir_jax.model.sharded import abstract_model, shard_model
from reasonir_jax.tokenization import (PromptTokenizer, bucket_length, load_tokenizer, pad_batch,
                                       prompt_prefix)
from reasonir_jax.training import flops

MIN_BUCKET = 32
PACK_ROW_MULTIPLE = 64  # packed rows are a multiple of this long
# Cost of one attention FLOP relative to a dense-layer FLOP when choosing the packed row length:
# masked softmax attention runs well below matmul rates (about 10-20x on XLA:CPU at width 512,
# far less with TPU/GPU flash kernels), so longer rows only pay where they remove much padding.
ATTN_COST_WEIGHT = 12
# Texts longer than this many tokens are encoded in proportionally smaller batches (halved per
# doubling of length) by `encode_by_length`, so one device call holds about
# batch_size * BUDGET_LENGTH tokens whatever max_length allows: at BRIGHT's 32768-token default a
# batch of long documents would otherwise need 16x the activation memory of a 2048-token one.
BUDGET_LENGTH = 2048


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def may_exceed(texts, instruction, length: int) -> list[int]:
  """Indices of the texts whose `BOS + prefix + text` could exceed `length` tokens: a byte-level
  BPE token holds at least one UTF-8 byte, so only those with more bytes need tokenizing."""
  prefix = len(prompt_prefix(instruction).encode()) + 1  # + 1: BOS
  return [i for i, t in enumerate(texts) if prefix + len(t.encode()) > length]


def encode_by_length(encoder, texts, *, instruction, batch_size: int, max_length: int,
                     budget_length: int = BUDGET_LENGTH, show_progress: bool = False,
                     **encode_kw) -> np.ndarray:
  """`encoder.encode` with texts longer than `budget_length` tokens in batches halved per
  doubling of their length (about batch_size * budget_length tokens per call); any object with
  `encode` (and a `prompt_tokenizer` to measure the texts) will do."""
  texts = list(texts)
  tok = getattr(encoder, "prompt_tokenizer", None)
  long = may_exceed(texts, instruction, budget_length) if tok and max_length > budget_length else []
  shift = {}
  if long:
    for i, e in zip(long, tok.encode([texts[i] for i in long], instruction, max_length)):
      n = len(e[0]) if e is not None else 0  # None: encode() below names the text
      if n > budget_length:
        shift[i] = int(np.ceil(np.log2(n / budget_length)))
  if not shift:
    return encoder.encode(texts, instruction=instruction, batch_size=batch_size,
                          max_length=max_length, show_progress=show_progress, **encode_kw)
  groups: dict[int, list[int]] = {}
  for i in range(len(texts)):
    groups.setdefault(max(1, batch_size >> shift.get(i, 0)), []).append(i)
  out = None
  for group_batch, idx in sorted(groups.items(), reverse=True):
    emb = np.asarray(encoder.encode([texts[i] for i in idx], instruction=instruction,
                                    batch_size=group_batch, max_length=max_length,
                                    show_progress=show_progress, **encode_kw))
    if out is None:
      out = np.zeros((len(texts), emb.shape[1]), emb.dtype)
    out[idx] = emb
  return out


def bucket_lengths(max_length: int) -> tuple[int, ...]:
  """Powers of two from 32 and the midpoints 1.5x between them (48, 96, 192, ...: at most a
  third of a row is padding rather than half), up to max_length, plus max_length itself."""
  out, b = [], MIN_BUCKET
  while b < max_length:
    out += [x for x in (b, b + b // 2) if x < max_length]
    b *= 2
  out.append(max_length)
  return tuple(out)


class Encoder:
  """Embeds texts with a LlamaEncoder and its recipe's pooling; see the module docstring."""

  def __init__(self, model: LlamaEncoder, tokenizer, model_cfg: ModelConfig, mesh=None,
               rules=None):
    if mesh is not None and rules is None:
      from reasonir_jax.configs.base import SHARDING_RULES
      rules = SHARDING_RULES
    self.model = model
    self.model_cfg = model_cfg
    self.mesh = mesh
    self.rules = rules
    if isinstance(tokenizer, PromptTokenizer):
      if (tokenizer.template, tokenizer.pooling) != (model_cfg.template, model_cfg.pooling):
        raise ValueError(f"Encoder: the PromptTokenizer's template/pooling "
                         f"{tokenizer.template}/{tokenizer.pooling} are not the model's "
                         f"{model_cfg.template}/{model_cfg.pooling}")
      self.prompt_tokenizer = tokenizer
    else:
      self.prompt_tokenizer = PromptTokenizer(tokenizer, model_cfg.template, model_cfg.pooling)
    if mesh is not None:
      shard_model(model, mesh, rules)  # a no-op for parameters already in their sharding
      self._dp = shd.data_parallel_size(mesh, rules)
      self._input_sharding = shd.batch_sharding(mesh, rules)
    else:
      self._dp = 1
      self._input_sharding = None
    graphdef, self._state = nnx.split(model)

    def run(state, input_ids, attention_mask, pool_mask):
      return embed(nnx.merge(graphdef, state), input_ids, attention_mask, pool_mask)

    self._embed = jax.jit(run)

    def run_packed(state, input_ids, segment_ids, positions, pool_ids, num_texts, max_segments):
      return embed_packed(nnx.merge(graphdef, state), input_ids, segment_ids, positions,
                          pool_ids, num_texts, max_segments)

    self._embed_packed = jax.jit(run_packed, static_argnums=(5, 6))

  @property
  def tokenizer(self):
    return self.prompt_tokenizer.tokenizer

  @classmethod
  def from_pretrained(cls, path: str, dtype: str | None = "bfloat16", mesh=None, rules=None,
                      show_progress: bool = True, step: int | None = None,
                      recipe: str | None = None) -> "Encoder":
    """Loads an HF directory or a training workdir (one holding `checkpoints/`; `step` picks a
    checkpoint, default the latest), local or remote (gs://...). With `mesh`, every parameter
    is read straight into its sharding (each process reads only its own blocks). `dtype=None`
    keeps the stored parameter dtype. `recipe` (a name of ModelConfig's RECIPES) replaces the
    one the directory or workdir config says."""
    from reasonir_jax import paths
    from reasonir_jax.hf.load import load_hf, local_tokenizer_dir, read_recipe
    if dtype not in (None, "bfloat16", "float32"):
      raise ValueError(f"Encoder.from_pretrained: dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    if recipe is not None and recipe not in RECIPES:
      raise ValueError(f"Encoder.from_pretrained: recipe={recipe!r} is not one of {tuple(RECIPES)}")
    forced = {} if recipe is None else RECIPES[recipe]
    if mesh is not None and rules is None:
      from reasonir_jax.configs.base import SHARDING_RULES
      rules = SHARDING_RULES
    if paths.exists(paths.join(path, "checkpoints")):
      return cls._from_workdir(path, dtype, mesh, rules, step, forced)
    if not paths.exists(paths.join(path, "config.json")):
      raise FileNotFoundError(f"Encoder.from_pretrained: {path} holds neither config.json (a "
                              f"Hugging Face directory) nor checkpoints/ (a training workdir)")
    kw = {} if dtype is None else dict(param_dtype=dtype, dtype=dtype)
    kw.update(forced or read_recipe(path))
    model, cfg = load_hf(path, mesh=mesh, rules=rules, show_progress=show_progress,
                         remat_policy="none", **kw)
    return cls(model, load_tokenizer(local_tokenizer_dir(path)), cfg, mesh=mesh, rules=rules)

  @classmethod
  def _from_workdir(cls, workdir: str, dtype: str | None, mesh, rules,
                    step: int | None = None, recipe: dict | None = None) -> "Encoder":
    """Restores the parameters of a training checkpoint straight into their shardings."""
    from reasonir_jax.hf.load import local_tokenizer_dir
    from reasonir_jax.training import checkpoint as ckpt_lib
    params, stored, tokenizer_path = ckpt_lib.restore_params(workdir, step, mesh, rules)
    dtype = dtype or stored.param_dtype
    cfg = stored.replace(param_dtype=dtype, dtype=dtype, remat_policy="none", **(recipe or {}))
    # The cast runs on the sharded arrays: nothing is gathered to one host.
    params = jax.tree.map(lambda x: x.astype(cfg.jnp_param_dtype), params)
    graphdef, state = abstract_model(cfg)
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(params))
    model = nnx.merge(graphdef, state)
    if mesh is not None:
      model.set_activation_sharding(mesh, rules)
    return cls(model, load_tokenizer(local_tokenizer_dir(tokenizer_path)), cfg, mesh=mesh,
               rules=rules)

  def encode(self, texts: Sequence[str], instruction: str | None | Sequence[str | None] = None,
             batch_size: int = 32, max_length: int = 2048, show_progress: bool | None = None,
             packing: bool = True, budget_length: int | None = None) -> np.ndarray:
    """[len(texts), hidden] float32 L2-normalised embeddings, in the caller's order.

    With `budget_length`, texts longer than that many tokens go in smaller batches
    (`encode_by_length`).

    With packing (the default) the texts are packed into rows (reasonir_jax.packing) and each
    device call gets the same token budget, about batch_size texts of the longest length: one
    compiled shape for the whole call, no FLOPs on padding. packing=False pads each batch of
    batch_size texts (sorted by length) to a bucket length instead.
    """
    if isinstance(texts, str):
      raise TypeError("Encoder.encode takes a list of texts, not a single string")
    texts = list(texts)
    if budget_length is not None:
      return encode_by_length(self, texts, instruction=instruction, batch_size=batch_size,
                              max_length=max_length, budget_length=budget_length,
                              show_progress=bool(show_progress), packing=packing)
    hidden = self.model_cfg.hidden_size
    if not texts:
      return np.zeros((0, hidden), np.float32)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = self.prompt_tokenizer.encode(texts, instruction, max_length)
    for i, e in enumerate(encoded):
      if e is None:
        raise ValueError(f"text {i}: the instruction prefix alone reaches max_length={max_length}")
    if packing:
      return self._encode_packed(encoded, batch_size, max_length, show_progress)
    return self._encode_padded(encoded, batch_size, max_length, show_progress)

  def _place(self, arrays):
    if self._input_sharding is None:
      return arrays
    return [jax.device_put(x, self._input_sharding) for x in arrays]

  def _encode_padded(self, encoded, batch_size: int, max_length: int, show_progress) -> np.ndarray:
    # Fixed batch (a multiple of the data-parallel size) so shapes repeat across batches.
    batch = _round_up(batch_size, self._dp)
    buckets = bucket_lengths(max_length)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = np.zeros((len(encoded), self.model_cfg.hidden_size), np.float32)
    starts = range(0, len(order), batch)
    if show_progress is None:
      show_progress = len(starts) > 8
    for s in tqdm(starts, desc="encode", disable=not show_progress, leave=False):
      idx = order[s: s + batch]
      rows = [encoded[i] for i in idx]
      length = bucket_length(max(len(r[0]) for r in rows), buckets, max_length)
      rows += [([self.prompt_tokenizer.pad_id], 1)] * (batch - len(rows))  # filler rows
      arrays = pad_batch(rows, length, self.prompt_tokenizer.pad_id)
      inputs = self._place([arrays["input_ids"], arrays["attention_mask"], arrays["pool_mask"]])
      emb_bd = self._embed(self._state, *inputs)
      out[idx] = np.asarray(jax.device_get(emb_bd))[: len(idx)]
    return out

  def _row_cost(self, num_rows: int, row_length: int) -> float:
    """Estimated cost of num_rows rows of row_length tokens: dense FLOPs plus weighted
    attention FLOPs over every row_length^2 pair (what the kernels run, masked or not)."""
    c = self.model_cfg
    return (flops.dense_forward_flops(c, num_rows * row_length)
            + ATTN_COST_WEIGHT * flops.attention_forward_flops(c, num_rows * row_length**2))

  def _padded_cost(self, lengths: list[int], batch_size: int, max_length: int) -> float:
    """The estimated cost of the padded path (sorted batches padded to bucket lengths)."""
    buckets = bucket_lengths(max_length)
    ordered = sorted(lengths, reverse=True)
    return sum(self._row_cost(batch_size, bucket_length(ordered[s], buckets, max_length))
               for s in range(0, len(ordered), batch_size))

  def _pack_rows(self, lengths: list[int], longest: int) -> tuple[int, list[list[int]], float]:
    """(row length, rows, cost): the longest text or a few times that (room for more texts per
    row, at a quadratic attention cost), whichever packing has the lowest estimated cost."""
    best = None
    candidates = {_round_up(int(longest * x), PACK_ROW_MULTIPLE) for x in (1, 1.5, 2, 4)}
    for row_length in sorted(candidates):
      rows = pack_lengths(lengths, row_length)
      cost = self._row_cost(len(rows), row_length)
      if best is None or cost < best[0]:
        best = (cost, row_length, rows)
    return best[1], best[2], best[0]

  def _encode_packed(self, encoded, batch_size: int, max_length: int, show_progress) -> np.ndarray:
    lengths = [len(ids) for ids, _ in encoded]
    longest = _round_up(max(lengths), PACK_ROW_MULTIPLE)
    row_length, rows, cost = self._pack_rows(lengths, longest)
    batch = _round_up(batch_size, self._dp)
    if all(len(r) == 1 for r in rows) or self._padded_cost(lengths, batch, max_length) < cost:
      # Nothing shares a row, or sorted padded batches waste less (near-equal lengths): the
      # padded path does that work without a segment mask.
      return self._encode_padded(encoded, batch_size, max_length, show_progress)
    # About batch_size texts of the longest length per call.
    rows_per_call = _round_up(max(1, -(-batch_size * longest // row_length)), self._dp)
    calls = [rows[s: s + rows_per_call] for s in range(0, len(rows), rows_per_call)]
    # The same text count in every call (a multiple of the data-parallel size): one compile.
    num_texts = _round_up(max(sum(len(r) for r in call) for call in calls), 8 * self._dp)
    # The most texts one row holds, rounded up to a power of two (few compiled shapes): the
    # cudnn attention backend sizes its packed layout by it.
    max_segments = 1 << (max(len(r) for r in rows) - 1).bit_length()
    out = np.zeros((len(encoded), self.model_cfg.hidden_size), np.float32)
    if show_progress is None:
      show_progress = len(calls) > 8
    bar = tqdm(total=len(encoded), desc="encode", unit="text", disable=not show_progress,
               leave=False)
    start, tokens, pending = time.perf_counter(), 0, None

    def finish(job):
      nonlocal tokens
      idx, emb_nd, n_tokens = job
      out[idx] = np.asarray(jax.device_get(emb_nd))[: len(idx)]
      tokens += n_tokens
      bar.update(len(idx))
      bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")

    for call in calls:
      idx = [i for row in call for i in row]
      local = {i: k for k, i in enumerate(idx)}
      call = [[local[i] for i in row] for row in call] + [[]] * (rows_per_call - len(call))
      arrays = packed_arrays([encoded[i] for i in idx], call, row_length,
                             self.prompt_tokenizer.pad_id)
      inputs = self._place([arrays[k] for k in ("input_ids", "segment_ids", "positions",
                                                "pool_ids")])
      # Dispatched before the previous call's result is fetched: host packing overlaps it.
      job = (idx, self._embed_packed(self._state, *inputs, num_texts, max_segments),
             sum(lengths[i] for i in idx))
      if pending is not None:
        finish(pending)
      pending = job
    finish(pending)
    bar.close()
    return out

  def save_pretrained(self, path: str, dtype: str | None = None,
                      max_shard_bytes: int | None = None,
                      prompts: dict[str, str] | None = None, max_length: int = 2048) -> str:
    """Writes an HF `LlamaModel`/`Qwen3Model` directory (config, safetensors, tokenizer,
    sentence-transformers files with a prompt per `prompts` entry: name -> instruction); call on
    every process."""
    from reasonir_jax.hf.save import MAX_SHARD_BYTES, save_hf
    return save_hf(self._state, self.model_cfg, path, tokenizer=self.tokenizer, dtype=dtype,
                   max_shard_bytes=max_shard_bytes or MAX_SHARD_BYTES, prompts=prompts,
                   max_length=max_length)
