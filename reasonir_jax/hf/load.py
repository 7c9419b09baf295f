"""Import a Hugging Face Llama or Qwen3 checkpoint directory into a `LlamaEncoder`, block by block.

Accepts one `model.safetensors` or shards with `model.safetensors.index.json`, bare `LlamaModel` /
`Qwen3Model` names or `*ForCausalLM` ones (`model.` prefix; `lm_head.weight`, absent when tied, is
ignored), on local disk or
a remote filesystem (gs://, via reasonir_jax.paths). Every parameter is built with
`jax.make_array_from_callback`: each process reads only the blocks its own devices hold, straight
from the lazily opened files, in our layout (hf/mapping.py). No process reads a whole tensor that
it does not hold, and nothing is gathered across hosts (`jax.device_put` of a host array to a
global sharding would all-gather it to check that every host passed the same value).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding
from tqdm.auto import tqdm

from reasonir_jax import paths
from reasonir_jax import sharding as shd
from reasonir_jax.hf import mapping
from reasonir_jax.hf.safetensors_io import SafetensorsFile
from reasonir_jax.model import LlamaEncoder, ModelConfig
from reasonir_jax.model.config import RECIPES
from reasonir_jax.model.sharded import abstract_model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja")


def read_hf_config(path: str) -> dict[str, Any]:
  cfg_path = paths.join(path, "config.json")
  if not paths.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: not a Hugging Face model directory")
  with paths.open(cfg_path, "r") as f:
    return json.load(f)


def read_recipe(path: str) -> dict[str, Any]:
  """The embedding recipe (ModelConfig's causal, template, pooling) a directory's
  sentence-transformers files say: last-token pooling (Qwen3-Embedding's checkpoints, our
  exports of its recipe) is the qwen3_embedding recipe, anything else ReasonIR's; config.json's
  `is_causal`, where written, decides the attention."""
  recipe = dict(RECIPES["reasonir"])
  modules_path = paths.join(path, "modules.json")
  if paths.exists(modules_path):
    with paths.open(modules_path, "r") as f:
      modules = json.load(f)
    for m in modules:
      pooling_path = paths.join(path, m.get("path", ""), "config.json")
      if m.get("type", "").endswith(".Pooling") and paths.exists(pooling_path):
        with paths.open(pooling_path, "r") as f:
          if json.load(f).get("pooling_mode_lasttoken"):
            recipe = dict(RECIPES["qwen3_embedding"])
  causal = read_hf_config(path).get("is_causal")
  if causal is not None:
    recipe["causal"] = bool(causal)
  return recipe


def local_tokenizer_dir(path: str) -> str:
  """`path` itself when local; else a local temporary copy of its tokenizer files (transformers
  reads tokenizers from local directories only)."""
  if not paths.is_remote(path):
    return path
  out = tempfile.mkdtemp(prefix="reasonir_tokenizer_")
  for name in TOKENIZER_FILES:
    if paths.exists(paths.join(path, name)):
      with paths.open(paths.join(path, name)) as src, open(os.path.join(out, name), "wb") as dst:
        shutil.copyfileobj(src, dst)
  return out


class CheckpointIndex:
  """Where each tensor lives: our (bare LlamaModel) name -> (file, name in that file)."""

  def __init__(self, path: str):
    self.path = path
    index_path = paths.join(path, INDEX_FILE)
    if paths.exists(index_path):
      with paths.open(index_path, "r") as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
      raw = {name: paths.join(path, fname) for name, fname in weight_map.items()}
    elif paths.exists(paths.join(path, SINGLE_FILE)):
      single = paths.join(path, SINGLE_FILE)
      raw = {name: single for name in SafetensorsFile(single).names()}
    else:
      raise FileNotFoundError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    causal_lm = any(n.startswith("model.") for n in raw)
    self.locations: dict[str, tuple[str, str]] = {}
    self.ignored: list[str] = []
    for name, file in raw.items():
      bare = name[len("model."):] if causal_lm and name.startswith("model.") else name
      if mapping.is_ignored(bare):
        self.ignored.append(name)
        continue
      self.locations[bare] = (file, name)
    self._open: dict[str, SafetensorsFile] = {}

  def file(self, path: str) -> SafetensorsFile:
    if path not in self._open:  # opening reads the header only
      if not paths.exists(path):
        raise FileNotFoundError(f"checkpoint shard {path} (listed in {INDEX_FILE}) is missing")
      self._open[path] = SafetensorsFile(path)
    return self._open[path]

  def check(self, bare: str, expected_hf_shape: tuple[int, ...]) -> None:
    file, name = self.locations[bare]
    st = self.file(file)
    if name not in st.names():
      raise ValueError(f"tensor {name!r} is listed in the index but missing from {file}")
    shape = st.shape(name)
    if shape != tuple(expected_hf_shape):
      raise ValueError(f"tensor {name!r} in {file} has shape {shape}, expected "
                       f"{tuple(expected_hf_shape)} from config.json")

  def read_block(self, bare: str, view: tuple[int, ...], index: tuple) -> np.ndarray:
    file, name = self.locations[bare]
    return self.file(file).read_block(name, view, index)


def _key(index: tuple) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _entry_callback(index: CheckpointIndex, entry: mapping.Entry, layer_shape, dtype):
  """data_callback for make_array_from_callback: our-layout block `index` of one parameter."""
  view = mapping.view_shape(entry.transform, layer_shape)
  cache: dict[tuple, np.ndarray] = {}  # replicated devices ask for the same block: read it once

  def block(layer_name, idx):
    arr = index.read_block(layer_name, view, mapping.view_index(entry.transform, idx))
    return mapping.view_to_ours(entry.transform, arr).astype(dtype)

  def callback(idx: tuple) -> np.ndarray:
    idx = tuple(idx) + (slice(None),) * (len(layer_shape) + entry.stacked - len(idx))
    key = _key(idx)
    if key not in cache:
      if entry.stacked:
        layers = range(len(entry.hf_names))[idx[0]]
        cache[key] = np.stack([block(entry.hf_names[i], idx[1:]) for i in layers])
      else:
        cache[key] = np.ascontiguousarray(block(entry.hf_names[0], idx))
    return cache[key]

  return callback


def load_params(path: str, cfg: ModelConfig, abstract_state: nnx.State, mesh=None, rules=None,
                show_progress: bool = True) -> nnx.State:
  """Reads the checkpoint at `path` into a state shaped like `abstract_state`, each parameter in
  its sharding on `mesh` under `rules` (one local device without a mesh)."""
  index = CheckpointIndex(path)
  scanned = "layers" in abstract_state and not isinstance(
      next(iter(abstract_state["layers"].keys())), int)
  entries = mapping.param_entries(cfg.num_layers, scanned, cfg.qk_norm)

  expected = [n for e in entries for n in e.hf_names]
  missing = [n for n in expected if n not in index.locations]
  if missing:
    raise ValueError(f"{path}: checkpoint lacks tensor {missing[0]!r}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  unexpected = sorted(set(index.locations) - set(expected))
  if unexpected:
    file, name = index.locations[unexpected[0]]
    raise ValueError(f"unexpected tensor {name!r} in {file}: the encoder has no such parameter")

  values = nnx.to_pure_dict(abstract_state)
  device = jax.local_devices()[0]
  for entry in tqdm(entries, desc="import", disable=not show_progress, leave=False):
    var = mapping.get_path(abstract_state, entry.path)
    layer_shape = tuple(var.shape[1:]) if entry.stacked else tuple(var.shape)
    for hf_name in entry.hf_names:
      index.check(hf_name, mapping.hf_shape(entry.transform, layer_shape))
    if mesh is not None:
      target = shd.named_sharding(mesh, rules, shd.variable_logical_axes(var), var.shape)
    else:
      target = SingleDeviceSharding(device)
    callback = _entry_callback(index, entry, layer_shape, np.dtype(var.dtype))
    mapping.set_path(values, entry.path,
                     jax.make_array_from_callback(tuple(var.shape), target, callback))
  nnx.replace_by_pure_dict(abstract_state, values)
  return abstract_state


def load_hf(path: str, *, mesh=None, rules=None, show_progress: bool = True,
            **overrides) -> tuple[LlamaEncoder, ModelConfig]:
  """A LlamaEncoder with the weights of the HF directory `path` (local or remote).

  `overrides` replace ModelConfig fields (e.g. param_dtype="float32", scan_layers=True, the
  recipe's causal/template/pooling: `read_recipe(path)` gives those its files say).
  With `mesh`, each parameter lands directly in its sharding under `rules`
  (default: the rules of reasonir_jax/configs/base.py); on several processes each reads only its blocks.
  """
  if mesh is not None and rules is None:
    from reasonir_jax.configs.base import SHARDING_RULES
    rules = SHARDING_RULES
  cfg = ModelConfig.from_hf_dict(read_hf_config(path), **overrides)
  graphdef, abstract_state = abstract_model(cfg)
  state = load_params(path, cfg, abstract_state, mesh, rules, show_progress)
  model = nnx.merge(graphdef, state)
  if mesh is not None:
    model.set_activation_sharding(mesh, rules)
  return model, cfg
