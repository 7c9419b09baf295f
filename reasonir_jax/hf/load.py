"""Import a Hugging Face Llama checkpoint directory into a `LlamaEncoder`, tensor by tensor.

Accepts one `model.safetensors` or shards with `model.safetensors.index.json`, bare `LlamaModel`
names or `LlamaForCausalLM` ones (`model.` prefix; `lm_head.weight` is ignored). Each tensor is
memory-mapped, converted to our layout (hf/mapping.py) and placed straight into its target
sharding; scanned layers are written one layer at a time into the sharded stacked array.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
from tqdm.auto import tqdm

from reasonir_jax import sharding as shd
from reasonir_jax.hf import mapping
from reasonir_jax.hf.safetensors_io import SafetensorsFile
from reasonir_jax.model import LlamaEncoder, ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_hf_config(path: str) -> dict[str, Any]:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: not a Hugging Face model directory")
  with open(cfg_path) as f:
    return json.load(f)


class CheckpointIndex:
  """Where each tensor lives: our (bare LlamaModel) name -> (file, name in that file)."""

  def __init__(self, path: str):
    self.path = path
    index_path = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
      raw = {name: os.path.join(path, fname) for name, fname in weight_map.items()}
    elif os.path.isfile(os.path.join(path, SINGLE_FILE)):
      single = os.path.join(path, SINGLE_FILE)
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
    if path not in self._open:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint shard {path} (listed in {INDEX_FILE}) is missing")
      self._open[path] = SafetensorsFile(path)
    return self._open[path]

  def read(self, bare: str, expected_hf_shape: tuple[int, ...]) -> np.ndarray:
    file, name = self.locations[bare]
    st = self.file(file)
    if name not in st.names():
      raise ValueError(f"tensor {name!r} is listed in the index but missing from {file}")
    shape = st.shape(name)
    if shape != tuple(expected_hf_shape):
      raise ValueError(f"tensor {name!r} in {file} has shape {shape}, expected "
                       f"{tuple(expected_hf_shape)} from config.json")
    return st.get(name)


def _place(sharding, value: np.ndarray):
  return jax.device_put(value, sharding)


def load_params(path: str, cfg: ModelConfig, abstract_state: nnx.State, mesh=None, rules=None,
                show_progress: bool = True) -> nnx.State:
  """Reads the checkpoint at `path` into a state shaped like `abstract_state`."""
  index = CheckpointIndex(path)
  scanned = "layers" in abstract_state and not isinstance(
      next(iter(abstract_state["layers"].keys())), int)
  entries = mapping.param_entries(cfg.num_layers, scanned)

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
  device = jax.devices()[0]
  for entry in tqdm(entries, desc="import", disable=not show_progress, leave=False):
    var = mapping.get_path(abstract_state, entry.path)
    dtype = np.dtype(var.dtype)
    if mesh is not None:
      target = shd.named_sharding(mesh, rules, shd.variable_logical_axes(var), var.shape)
    else:
      target = SingleDeviceSharding(device)
    layer_shape = tuple(var.shape[1:]) if entry.stacked else tuple(var.shape)
    want = mapping.hf_shape(entry.transform, layer_shape)

    def convert(hf_name):
      arr = index.read(hf_name, want)
      return np.asarray(mapping.to_ours(entry.transform, arr, layer_shape)).astype(dtype)

    if not entry.stacked:
      value = _place(target, convert(entry.hf_names[0]))
    else:
      # One layer at a time into the sharded stack (the full stack never sits on the host).
      if isinstance(target, NamedSharding):
        slice_sharding = NamedSharding(mesh, PartitionSpec(*target.spec[1:]))
      else:
        slice_sharding = target
      value = _zeros(tuple(var.shape), dtype, target)()
      for i, hf_name in enumerate(entry.hf_names):
        value = _set_layer(value, _place(slice_sharding, convert(hf_name)), np.int32(i))
    mapping.set_path(values, entry.path, value)
  nnx.replace_by_pure_dict(abstract_state, values)
  return abstract_state


@functools.lru_cache(maxsize=None)
def _zeros(shape, dtype, sharding):
  """A compiled zeros-in-this-sharding (cached: q/k/v and gate/up share one)."""
  return jax.jit(functools.partial(jnp.zeros, shape, dtype), out_shardings=sharding)


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stack, layer, i):
  # `i` is traced, so one compilation serves every layer.
  return jax.lax.dynamic_update_index_in_dim(stack, layer.astype(stack.dtype), i, 0)


def load_hf(path: str, *, mesh=None, rules=None, show_progress: bool = True,
            **overrides) -> tuple[LlamaEncoder, ModelConfig]:
  """A LlamaEncoder with the weights of the HF directory `path`.

  `overrides` replace ModelConfig fields (e.g. param_dtype="float32", scan_layers=True).
  With `mesh`, each parameter lands directly in its sharding under `rules`
  (default: the rules of config_base.py).
  """
  if mesh is not None and rules is None:
    from reasonir_jax.config_base import SHARDING_RULES
    rules = SHARDING_RULES
  cfg = ModelConfig.from_hf_dict(read_hf_config(path), **overrides)
  abstract = nnx.eval_shape(lambda: LlamaEncoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = load_params(path, cfg, abstract_state, mesh, rules, show_progress)
  model = nnx.merge(graphdef, state)
  if mesh is not None:
    model.set_activation_sharding(mesh, rules)
  return model, cfg
