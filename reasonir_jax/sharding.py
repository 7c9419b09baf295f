"""Device mesh, logical-axis sharding rules and activation constraints (no model code).

Parameters and activations carry *logical* axis names ("embed", "heads", "batch", ...); the rule
table `config.sharding_rules` (see reasonir_jax/configs/base.py) maps them to mesh axes ("data",
"fsdp", "tensor"). Changing the parallelism means editing that table or `config.mesh`, never the model.

Activation constraints (`constrain`) only act inside `activation_sharding(mesh, rules)`; outside
it (plain CPU use, tests without a mesh) they are no-ops. Building a model in its sharding is
`reasonir_jax.model.sharded`. Flax's `nnx.logical_axis_rules` / `get_named_sharding` map names the
same way but cannot replicate a dimension the mesh does not divide (2 KV heads on a 4-way tensor
axis), which `logical_to_spec` does.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Any]]

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "reasonir_activation_sharding", default=None)


def _fill(shape: tuple[int, ...], total: int, key: str, what: str) -> tuple[int, ...]:
  """`shape` with its one -1 filled so that it multiplies to `total`; errors name `key`."""
  if shape.count(-1) > 1:
    raise ValueError(f"{key} {shape} may hold at most one -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or total % known:
      raise ValueError(f"{key} {shape} does not fit {total} {what} "
                       f"({total} is not a multiple of {known})")
    shape = tuple(total // known if s == -1 else s for s in shape)
  if math.prod(shape) != total or any(s <= 0 for s in shape):
    raise ValueError(f"{key} {shape} does not multiply to the {total} {what}")
  return shape


def _slice_groups(devices: Sequence[Any]) -> list[list[Any]]:
  """The devices grouped by `slice_index` (TPU multi-slice; devices without one: one slice)."""
  groups: dict[int, list] = {}
  for d in devices:
    groups.setdefault(int(getattr(d, "slice_index", 0) or 0), []).append(d)
  return [groups[k] for k in sorted(groups)]


def _slice_mesh(shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
  try:
    from jax.experimental import mesh_utils
    return mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    # Some fake/host topologies are not supported by the topology-aware mesh builder.
    return np.asarray(devices, dtype=object).reshape(shape)


def device_array(mesh_cfg, devices: Sequence[Any]) -> np.ndarray:
  """The device layout of `make_mesh`: `mesh_cfg.shape` within each slice (ICI) times
  `mesh_cfg.dcn_shape` across slices (DCN), so that no axis of size > 1 in `shape` spans slices.

  One -1 in each shape is filled: in `shape` from the devices per slice, in `dcn_shape` from the
  slice count. Without `dcn_shape` (older configs) the slices go on the `data` axis.
  """
  devices = list(devices)
  axes = tuple(mesh_cfg.axes)
  shape = tuple(int(s) for s in mesh_cfg.shape)
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {shape} has {len(shape)} entries but mesh.axes {axes} has "
                     f"{len(axes)}")
  dcn = getattr(mesh_cfg, "dcn_shape", None)
  dcn = (tuple(-1 if a == "data" else 1 for a in axes) if dcn is None
         else tuple(int(s) for s in dcn))
  if len(dcn) != len(axes):
    raise ValueError(f"mesh.dcn_shape {dcn} has {len(dcn)} entries but mesh.axes {axes} has "
                     f"{len(axes)}")
  slices = _slice_groups(devices)
  sizes = {len(g) for g in slices}
  if len(sizes) != 1:
    raise ValueError(f"the devices span {len(slices)} slices of unequal sizes {sorted(sizes)}")
  if len(slices) > 1 and -1 not in dcn and math.prod(dcn) == 1:
    raise ValueError(f"the devices span {len(slices)} slices but mesh.dcn_shape {dcn} puts no "
                     f"axis across them (e.g. --config.mesh.dcn_shape=(-1,1,1))")
  dcn = _fill(dcn, len(slices), "mesh.dcn_shape", "slices the devices span")
  per_slice = len(devices) // len(slices)
  what = "devices" if len(slices) == 1 else "devices of each slice"
  shape = _fill(shape, per_slice, "mesh.shape", what)
  if len(slices) == 1:
    return _slice_mesh(shape, devices)
  # Each slice's block is laid out on its own ICI torus; blocks are tiled along the DCN axes.
  blocks = np.empty(dcn, dtype=object)
  for i, group in enumerate(slices):
    blocks[np.unravel_index(i, dcn)] = _slice_mesh(shape, group)
  return np.block(blocks.tolist())


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Every mesh the package builds (trainer, AOT report, export, BRIGHT evaluation): see
  `device_array`.

  `mesh_cfg` has `shape` and `axes` (and optionally `dcn_shape`). On one slice the mesh is
  `shape` (one -1 filled from the device count); on several (TPU multi-slice, devices with
  different `slice_index`) it is `shape` x `dcn_shape`, e.g. FSDP within each slice over ICI
  and data parallelism across slices over DCN.
  """
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(device_array(mesh_cfg, devices), tuple(mesh_cfg.axes))


def _rule_table(rules: Rules) -> dict[str, Any]:
  table = {}
  for item in rules:
    if len(item) != 2:
      raise ValueError(f"sharding rule {item!r} is not a (logical_name, mesh_axes) pair")
    name, target = item
    table.setdefault(name, target)  # the first rule for a name wins
  return table


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  A mesh axis is used at most once per spec. With `mesh` and `shape`, a dimension that the mesh
  axes do not divide evenly is replicated instead (e.g. 2 KV heads on a 4-way tensor axis).
  """
  table = _rule_table(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no entry in sharding_rules "
                       f"(known: {sorted(table)})")
    target = table[name]
    if target is None:
      spec.append(None)
      continue
    mesh_axes = (target,) if isinstance(target, str) else tuple(target)
    mesh_axes = tuple(a for a in mesh_axes if a not in used)
    if mesh is not None:
      unknown = [a for a in mesh_axes if a not in mesh.shape]
      if unknown:
        raise ValueError(f"sharding rule {name!r} -> {target!r} names mesh axes {unknown} that the "
                         f"mesh {tuple(mesh.axis_names)} does not have")
      if shape is not None:
        # Drop trailing mesh axes until the dimension divides evenly.
        while mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
          mesh_axes = mesh_axes[:-1]
    used.update(mesh_axes)
    if not mesh_axes:
      spec.append(None)
    elif len(mesh_axes) == 1:
      spec.append(mesh_axes[0])
    else:
      spec.append(mesh_axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, rules: Rules, logical_axes: Sequence[str | None],
                   shape: Sequence[int] | None = None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh, shape))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Sharding of [batch, length] inputs (input_ids, attention_mask, pool_mask)."""
  return named_sharding(mesh, rules, ("batch", "length"))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch axis is split; batches must be a multiple of it."""
  spec = logical_to_spec(("batch",), rules, mesh)[0]
  if spec is None:
    return 1
  axes = (spec,) if isinstance(spec, str) else spec
  return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Rules):
  """Within this block, `constrain` applies logical sharding constraints on `mesh`."""
  token = _ACTIVE.set(None if mesh is None else (mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_sharding() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) that `constrain` acts on here; None outside `activation_sharding`."""
  return _ACTIVE.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` on logical names; a no-op when no mesh is active."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(
      x, named_sharding(mesh, rules, logical_axes, x.shape))


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def variable_logical_axes(var: nnx.Variable) -> tuple[str | None, ...]:
  """The logical axis names a parameter was created with (replicated if it has none)."""
  axes = var.get_metadata().get("out_sharding")
  if not axes:
    return (None,) * len(var.shape)
  if len(axes) != len(var.shape):
    raise ValueError(f"parameter of shape {var.shape} has logical axes {axes} of another rank")
  return tuple(axes)


def param_shardings(model_or_state, mesh: Mesh, rules: Rules):
  """A tree like `nnx.state(model)` holding each parameter's NamedSharding."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  return jax.tree.map(
      lambda v: named_sharding(mesh, rules, variable_logical_axes(v), v.shape),
      state, is_leaf=_is_var)
