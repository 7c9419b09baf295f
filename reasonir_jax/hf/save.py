"""Export an encoder to a Hugging Face `LlamaModel` directory that transformers loads.

Writes config.json (architectures ["LlamaModel"]), safetensors shards of at most
`max_shard_bytes` (5 GB by default) with `model.safetensors.index.json` when there is more than
one, and the tokenizer files. Tensors are fetched, converted and written one at a time.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from reasonir_jax.hf import mapping
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


def save_hf(model_or_params, model_cfg: ModelConfig, out_dir: str, tokenizer=None,
            dtype: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
            show_progress: bool = True) -> str:
  """Writes an HF `LlamaModel` directory; `dtype` (default: the model's param dtype) is the
  saved tensor dtype. `tokenizer` is a tokenizer object or a directory to copy it from."""
  dtype = dtype or model_cfg.param_dtype
  if dtype not in _NP_DTYPES:
    raise ValueError(f"save_hf: dtype {dtype!r} is not one of {sorted(_NP_DTYPES)}")
  np_dtype = _NP_DTYPES[dtype]
  params, scanned = normalise_layers(pure_params(model_or_params))
  entries = mapping.param_entries(model_cfg.num_layers, scanned)

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

  os.makedirs(out_dir, exist_ok=True)
  by_name = {p[0]: p for p in plan}

  def fetch(name: str) -> np.ndarray:
    _, entry, layer, _ = by_name[name]
    arr = _leaf(mapping.get_path(params, entry.path))
    if layer is not None:
      arr = arr[layer]
    host = np.asarray(jax.device_get(arr))
    return np.ascontiguousarray(mapping.to_hf(entry.transform, host).astype(np_dtype))

  n = len(shards)
  weight_map: dict[str, str] = {}
  total = 0
  progress = tqdm(total=len(plan), desc="export", disable=not show_progress, leave=False)
  for s, members in enumerate(shards):
    fname = SINGLE_FILE if n == 1 else f"model-{s + 1:05d}-of-{n:05d}.safetensors"
    specs = [(plan[k][0], plan[k][3], np_dtype) for k in members]

    def fetch_and_tick(name):
      progress.update(1)
      return fetch(name)

    write_safetensors(os.path.join(out_dir, fname), specs, fetch_and_tick)
    for name, shape, _ in specs:
      weight_map[name] = fname
      total += tensor_bytes(shape, np_dtype)
  progress.close()
  if n > 1:
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  elif os.path.exists(os.path.join(out_dir, INDEX_FILE)):
    os.remove(os.path.join(out_dir, INDEX_FILE))  # a stale index would shadow the single file

  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(model_cfg.to_hf_dict(dtype=dtype), f, indent=2)
  if tokenizer is not None:
    save_tokenizer(tokenizer, out_dir)
  return out_dir


def save_tokenizer(tokenizer: Any, out_dir: str) -> None:
  if isinstance(tokenizer, str):
    from reasonir_jax.tokenization import load_tokenizer
    tokenizer = load_tokenizer(tokenizer)
  if hasattr(tokenizer, "tokenizer") and not hasattr(tokenizer, "save_pretrained"):
    tokenizer = tokenizer.tokenizer  # a PromptTokenizer
  tokenizer.save_pretrained(out_dir)
