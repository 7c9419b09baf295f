"""Export an encoder to a Hugging Face directory that transformers and sentence-transformers load
as-is (no user code).

Writes config.json (architectures ["LlamaModel"] or ["Qwen3Model"], `is_causal` as the recipe
says, RoPE in both the transformers-5 `rope_parameters` layout and the older `rope_theta` +
`rope_scaling`), safetensors shards of at most `max_shard_bytes` (5 GB by default) with
`model.safetensors.index.json` when there is more than one, the tokenizer (with a pad token,
adding the template's BOS or EOS itself) and the sentence-transformers files
(hf/sentence_transformers_files.py). Tensors are fetched, converted and
written one at a time. On several processes every process takes part in gathering each tensor
(one at a time, so host memory stays at one tensor) and process 0 writes the files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reasonir_jax import paths
from reasonir_jax.hf import mapping
from reasonir_jax.hf import sentence_transformers_files as st_files
from reasonir_jax.hf.load import INDEX_FILE, SINGLE_FILE
from reasonir_jax.hf.safetensors_io import tensor_bytes, write_safetensors
from reasonir_jax.model import ModelConfig

MAX_SHARD_BYTES = 5 * 1000 ** 3
_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}


def pure_params(model_or_params) -> dict:
  """A nested dict of arrays from a module, an nnx.State or a (restored) nested dict."""
  if isinstance(model_or_params, nnx.Module):
    model_or_params = nnx.state(model_or_params, nnx.Param)
  if isinstance(model_or_params, nnx.State):
    return nnx.to_pure_dict(model_or_params)
  if isinstance(model_or_params, dict):
    return model_or_params
  raise TypeError(f"save_hf needs a LlamaEncoder, an nnx.State or a dict of parameters, "
                  f"got {type(model_or_params).__name__}")


def normalise_layers(params: dict) -> tuple[dict, bool]:
  """Detects scanned (stacked) layers; turns '0', '1' keys (from a restore) into ints."""
  if "layers" not in params:
    raise ValueError("parameters have no 'layers' entry; is this a LlamaEncoder state?")
  layers = params["layers"]
  keys = list(layers.keys())
  if keys and all(isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in keys):
    return dict(params, layers={int(k): v for k, v in layers.items()}), False
  return params, True


def _leaf(value):
  # Unwrap nnx.Variable leaves if a caller passed a state-like dict of Variables.
  return value.get_value() if isinstance(value, nnx.Variable) else value


def to_host(arr) -> np.ndarray:
  """A whole array on this host. An array spread over several processes is all-gathered, which
  every process must call in the same order."""
  if isinstance(arr, jax.Array) and not arr.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(arr, tiled=True))
  return np.asarray(jax.device_get(arr))


def hf_config(model_cfg: ModelConfig, dtype: str, pad_token_id: int | None = None) -> dict:
  """config.json: transformers 5 reads `rope_parameters` and `is_causal`; older readers find the
  top-level `rope_theta` and `rope_scaling` of published Llama-3.1 checkpoints."""
  d = model_cfg.to_hf_dict(dtype=dtype)
  # The recipe's attention in plain transformers, no patching (false: bidirectional).
  d["is_causal"] = bool(model_cfg.causal)
  rope = dict(d["rope_parameters"])
  d["rope_theta"] = rope.pop("rope_theta")
  d["rope_scaling"] = rope if rope.get("rope_type") != "default" else None
  if pad_token_id is not None:
    d["pad_token_id"] = int(pad_token_id)
  return d


def save_hf(model_or_params, model_cfg: ModelConfig, out_dir: str, tokenizer=None,
            dtype: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
            show_progress: bool = True, prompts: dict[str, str] | None = None,
            max_length: int = 2048) -> str:
  """Writes an HF `LlamaModel`/`Qwen3Model` directory (local or remote); `dtype` (default: the
  model's param dtype) is the saved tensor dtype. `tokenizer` is a tokenizer object or a
  directory to copy it from; with one, the sentence-transformers files of the recipe
  (model_cfg.template, pooling) are written too, with a prompt for documents and one per
  `prompts` entry (name -> instruction). Call on every process."""
  dtype = dtype or model_cfg.param_dtype
  if dtype not in _NP_DTYPES:
    raise ValueError(f"save_hf: dtype {dtype!r} is not one of {sorted(_NP_DTYPES)}")
  np_dtype = _NP_DTYPES[dtype]
  params, scanned = normalise_layers(pure_params(model_or_params))
  entries = mapping.param_entries(model_cfg.num_layers, scanned, model_cfg.qk_norm)
  primary = jax.process_index() == 0

  # Plan: HF name -> (entry, layer index, HF shape), in the table's order.
  plan: list[tuple[str, mapping.Entry, int | None, tuple[int, ...]]] = []
  for entry in entries:
    try:
      arr = _leaf(mapping.get_path(params, entry.path))
    except (KeyError, IndexError, TypeError):
      raise ValueError(f"parameters lack {'/'.join(map(str, entry.path))} "
                       f"(needed for {entry.hf_names[0]!r})") from None
    shape = tuple(arr.shape[1:]) if entry.stacked else tuple(arr.shape)
    if entry.stacked and arr.shape[0] != model_cfg.num_layers:
      raise ValueError(f"{'/'.join(map(str, entry.path))} stacks {arr.shape[0]} layers, "
                       f"config has {model_cfg.num_layers}")
    for i, name in enumerate(entry.hf_names):
      plan.append((name, entry, i if entry.stacked else None,
                   mapping.hf_shape(entry.transform, shape)))

  # Greedy shards in table order, each at most max_shard_bytes (one tensor may exceed it alone).
  shards: list[list[int]] = [[]]
  size = 0
  for k, (_, _, _, shape) in enumerate(plan):
    nbytes = tensor_bytes(shape, np_dtype)
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(k)
    size += nbytes

  if primary:
    paths.makedirs(out_dir)
  by_name = {p[0]: p for p in plan}
  progress = tqdm(total=len(plan), desc="export", disable=not show_progress, leave=False)

  def fetch(name: str) -> np.ndarray:
    _, entry, layer, _ = by_name[name]
    arr = _leaf(mapping.get_path(params, entry.path))
    host = to_host(arr if layer is None else arr[layer])  # one layer of a stack at a time
    progress.update(1)
    return np.ascontiguousarray(mapping.to_hf(entry.transform, host).astype(np_dtype))

  n = len(shards)
  weight_map: dict[str, str] = {}
  total = 0
  for s, members in enumerate(shards):
    fname = SINGLE_FILE if n == 1 else f"model-{s + 1:05d}-of-{n:05d}.safetensors"
    specs = [(plan[k][0], plan[k][3], np_dtype) for k in members]
    if primary:
      write_safetensors(paths.join(out_dir, fname), specs, fetch)
    else:  # the same gathers in the same order; only process 0 writes
      for name, _, _ in specs:
        fetch(name)
    for name, shape, _ in specs:
      weight_map[name] = fname
      total += tensor_bytes(shape, np_dtype)
  progress.close()

  if primary:
    if n > 1:
      _write_json(paths.join(out_dir, INDEX_FILE), {"metadata": {"total_size": total},
                                              "weight_map": weight_map})
    elif paths.exists(paths.join(out_dir, INDEX_FILE)):
      _remove(paths.join(out_dir, INDEX_FILE))  # a stale index would shadow the single file
    pad_id = None
    if tokenizer is not None:
      pad_id = save_tokenizer(tokenizer, out_dir, model_cfg.template)
      st_files.write(out_dir, model_cfg.hidden_size, prompts or {}, max_length,
                     model_cfg.template, model_cfg.pooling)
    _write_json(paths.join(out_dir, "config.json"), hf_config(model_cfg, dtype, pad_id))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("reasonir_jax save_hf")  # files complete for everyone
  return out_dir


def _write_json(path: str, payload) -> None:
  paths.write_text(path, json.dumps(payload, indent=2))


def _remove(path: str) -> None:
  if paths.is_remote(path):
    fs, name = paths.filesystem(path)
    fs.rm(name)
  else:
    os.remove(path)


def save_tokenizer(tokenizer: Any, out_dir: str, template: str = "reasonir") -> int:
  """Writes the tokenizer so that plain users get our inputs: it adds the template's BOS or EOS
  itself (as Llama-3's adds BOS; sentence-transformers relies on it) and has a pad token
  (Llama-3.1 has none: its `<|finetune_right_pad_id|>` is taken when present, else Qwen's
  `<|endoftext|>`, else EOS). Returns the pad token id."""
  from reasonir_jax.hf.tokenizer_export import prepare_tokenizer
  tokenizer = prepare_tokenizer(tokenizer, template)
  if not paths.is_remote(out_dir):
    tokenizer.save_pretrained(out_dir)
    return int(tokenizer.pad_token_id)
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer.save_pretrained(tmp)
    for name in os.listdir(tmp):
      with open(os.path.join(tmp, name), "rb") as src, paths.open(paths.join(out_dir, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
  return int(tokenizer.pad_token_id)
