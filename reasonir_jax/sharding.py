"""Device mesh, logical-axis sharding rules and activation constraints (no model code).

Parameters and activations carry *logical* axis names ("embed", "heads", "batch", ...); the rule
table `config.sharding_rules` (see config_base.py) maps them to mesh axes ("data", "fsdp",
"tensor"). Changing the parallelism means editing that table or `config.mesh`, never the model.

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


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh from `mesh_cfg.shape` (one -1 is filled from the device count) and `mesh_cfg.axes`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(s) for s in mesh_cfg.shape)
  axes = tuple(mesh_cfg.axes)
  n = len(devices)
  if len(shape) != len(axes):
    raise ValueError(f"mesh.shape {shape} has {len(shape)} entries but mesh.axes {axes} has {len(axes)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape {shape} may hold at most one -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or n % known:
      raise ValueError(f"mesh.shape {shape} does not fit {n} devices "
                       f"({n} is not a multiple of {known})")
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n or any(s <= 0 for s in shape):
    raise ValueError(f"mesh.shape {tuple(mesh_cfg.shape)} (= {shape}) does not match the number "
                     f"of devices ({n})")
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    # Some fake/host topologies are not supported by the topology-aware mesh builder.
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_array, axes)


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
