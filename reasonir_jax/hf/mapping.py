"""The one table between our parameter paths and Hugging Face Llama / Qwen3 tensor names.

Import (`load.py`) and export (`save.py`) both walk `param_entries(num_layers, scanned, qk_norm)`,
so they cannot drift apart. Each row names our path, the HF tensor (bare `LlamaModel` /
`Qwen3Model` names; `model.` is stripped from `*ForCausalLM` checkpoints by the loader) and a
layout transform:

  identity   same layout (embeddings, norm scales)
  transpose  HF [out, in] <-> ours [in, out] (MLP)
  in_heads   HF [heads*head_dim, d] <-> ours [d, heads, head_dim] (q/k/v)
  out_heads  HF [d, heads*head_dim] <-> ours [heads, head_dim, d] (o)

Each is a reshape-view plus an axis permutation (`view_shape`, `view_index`), so the importer can
read just the block of a tensor that one device holds.

With scanned layers our array has a leading "layers" axis; the rows then list one HF name per
layer, and the loader/saver stacks/unstacks along axis 0.
"""
from __future__ import annotations

import dataclasses

import numpy as np

TOP_LEVEL = (
    (("embed_tokens",), "embed_tokens.weight", "identity"),
    (("final_norm", "scale"), "norm.weight", "identity"),
)

PER_LAYER = (
    (("input_norm", "scale"), "input_layernorm.weight", "identity"),
    (("attn", "q_proj"), "self_attn.q_proj.weight", "in_heads"),
    (("attn", "k_proj"), "self_attn.k_proj.weight", "in_heads"),
    (("attn", "v_proj"), "self_attn.v_proj.weight", "in_heads"),
    (("attn", "o_proj"), "self_attn.o_proj.weight", "out_heads"),
    (("post_attn_norm", "scale"), "post_attention_layernorm.weight", "identity"),
    (("mlp", "gate_proj"), "mlp.gate_proj.weight", "transpose"),
    (("mlp", "up_proj"), "mlp.up_proj.weight", "transpose"),
    (("mlp", "down_proj"), "mlp.down_proj.weight", "transpose"),
)
# Qwen3's per-head q/k norms (ModelConfig.qk_norm).
QK_NORM = (
    (("attn", "q_norm", "scale"), "self_attn.q_norm.weight", "identity"),
    (("attn", "k_norm", "scale"), "self_attn.k_norm.weight", "identity"),
)

# Tensors a checkpoint may hold that the encoder does not use.
IGNORED = ("lm_head.weight",)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Entry:
  path: tuple  # our path in the state dict (str keys; int layer index when not scanned)
  hf_names: tuple[str, ...]  # one name, or one per layer when stacked
  transform: str
  stacked: bool  # our array has a leading layers axis (hf_names[i] is layer i)


def param_entries(num_layers: int, scanned: bool, qk_norm: bool = False) -> list[Entry]:
  entries = [Entry(path, (hf,), t, False) for path, hf, t in TOP_LEVEL]
  for path, hf, t in PER_LAYER + (QK_NORM if qk_norm else ()):
    if scanned:
      names = tuple(f"layers.{i}.{hf}" for i in range(num_layers))
      entries.append(Entry(("layers",) + path, names, t, True))
    else:
      entries.extend(Entry(("layers", i) + path, (f"layers.{i}.{hf}",), t, False)
                     for i in range(num_layers))
  return entries


# Every transform is "view the HF tensor in a shape, then permute its axes": ours =
# hf.reshape(view).transpose(perm). The view is C-contiguous, so any block of ours is a block of
# the view, which the importer reads without touching the rest of the tensor.
_PERMS = {"identity": None, "transpose": (1, 0), "in_heads": (2, 0, 1), "out_heads": (1, 2, 0)}


def _perm(transform: str, ndim: int) -> tuple[int, ...]:
  if transform not in _PERMS:
    raise ValueError(f"unknown transform {transform!r}")
  return _PERMS[transform] or tuple(range(ndim))


def view_shape(transform: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape the HF tensor is viewed in before permuting to ours (one layer)."""
  perm = _perm(transform, len(our_shape))
  view = [0] * len(perm)
  for ours_axis, view_axis in enumerate(perm):
    view[view_axis] = our_shape[ours_axis]
  return tuple(view)


def view_index(transform: str, index: tuple) -> tuple:
  """Our index (one slice per axis of one layer) -> the same block's index in the view."""
  perm = _perm(transform, len(index))
  view = [slice(None)] * len(perm)
  for ours_axis, view_axis in enumerate(perm):
    view[view_axis] = index[ours_axis]
  return tuple(view)


def view_to_ours(transform: str, view_arr: np.ndarray) -> np.ndarray:
  return view_arr.transpose(_perm(transform, view_arr.ndim))


def to_ours(transform: str, hf_arr: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
  """HF layout -> our layout (`our_shape` is one layer's shape)."""
  return view_to_ours(transform, hf_arr.reshape(view_shape(transform, tuple(our_shape))))


def to_hf(transform: str, our_arr: np.ndarray) -> np.ndarray:
  """Our layout (one layer) -> HF layout."""
  perm = _perm(transform, our_arr.ndim)
  return our_arr.transpose(np.argsort(perm)).reshape(hf_shape(transform, our_arr.shape))


def hf_shape(transform: str, our_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape for one layer of our shape."""
  view = view_shape(transform, tuple(our_shape))
  if transform == "in_heads":  # (heads, head_dim) is one HF axis
    return (view[0] * view[1], view[2])
  if transform == "out_heads":
    return (view[0], view[1] * view[2])
  return view


def is_ignored(hf_name: str) -> bool:
  return hf_name in IGNORED or hf_name.endswith(IGNORED_SUFFIXES)


def get_path(tree, path):
  node = tree
  for key in path:
    node = node[key]
  return node


def set_path(tree, path, value) -> None:
  node = tree
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
