"""One mesh builder for the trainer, the AOT report and multi-slice runs (sharding.make_mesh)."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from reasonir_jax import sharding as shd


@dataclasses.dataclass(frozen=True)
class _SliceDevice:
  """A CPU device that claims to sit in TPU slice `slice_index` (CPU devices have none)."""
  device: jax.Device
  slice_index: int

  def __getattr__(self, name):
    return getattr(self.device, name)


def _two_slices():
  return [_SliceDevice(d, i // 4) for i, d in enumerate(jax.devices())]


def _cfg(shape, dcn_shape=None, axes=("data", "fsdp", "tensor")):
  d = dict(shape=shape, axes=axes)
  if dcn_shape is not None:
    d["dcn_shape"] = dcn_shape
  return ml_collections.ConfigDict(d)


def _one_slice_per_group(array, axis):
  """Every group of devices along `axis` (the others fixed) lies in one slice."""
  groups = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
  return all(len({d.slice_index for d in g}) == 1 for g in groups)


@pytest.mark.parametrize("shape,dcn,expect", [
    ((1, -1, 1), (-1, 1, 1), (2, 4, 1)),   # the 8B recipe: FSDP in a slice, data across
    ((1, 2, 2), (2, 1, 1), (2, 2, 2)),     # FSDP x tensor in a slice
    ((2, -1, 1), None, (4, 2, 1)),         # no dcn_shape (older configs): slices on data
])
def test_two_slices_keep_fsdp_and_tensor_inside_a_slice(shape, dcn, expect):
  array = shd.device_array(_cfg(shape, dcn), _two_slices())
  assert array.shape == expect
  assert _one_slice_per_group(array, 1) and _one_slice_per_group(array, 2)
  # The data axis is the one that crosses slices; each slice holds a whole block.
  assert {d.slice_index for d in array[:, 0, 0]} == {0, 1}
  assert sorted(d.id for d in array.ravel()) == list(range(8))
  # The same layout on the real devices is a Mesh the trainer can use.
  mesh = jax.sharding.Mesh(np.vectorize(lambda d: d.device, otypes=[object])(array),
                           ("data", "fsdp", "tensor"))
  assert dict(mesh.shape) == dict(zip(("data", "fsdp", "tensor"), expect))


def test_a_plain_reshape_would_put_fsdp_across_slices():
  # What the trainer did before: 8 devices reshaped to (1, 8, 1) -> FSDP spans both slices.
  plain = np.asarray(_two_slices(), dtype=object).reshape(1, 8, 1)
  assert not _one_slice_per_group(plain, 1)
  assert _one_slice_per_group(shd.device_array(_cfg((1, -1, 1), (-1, 1, 1)), _two_slices()), 1)


def test_single_slice_is_unchanged_by_dcn_shape():
  mesh = shd.make_mesh(_cfg((2, -1, 1), (-1, 1, 1)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert (mesh.devices == shd.make_mesh(_cfg((2, -1, 1))).devices).all()


@pytest.mark.parametrize("shape,dcn,devices,match", [
    ((1, -1, 1), (3, 1, 1), "two", r"mesh\.dcn_shape \(3, 1, 1\).*2 slices"),
    ((1, -1, 1), (1, 1, 1), "two", r"mesh\.dcn_shape \(1, 1, 1\) puts no axis across"),
    ((1, 8, 1), (-1, 1, 1), "two", r"mesh\.shape \(1, 8, 1\).*4 devices of each slice"),
    ((1, -1, 1), (2, 1, 1), "one", r"mesh\.dcn_shape \(2, 1, 1\).*1 slices"),
    ((1, -1, 1), (-1, 1), "one", r"mesh\.dcn_shape \(-1, 1\) has 2 entries"),
])
def test_shapes_that_do_not_multiply_out_name_the_key(shape, dcn, devices, match):
  devs = _two_slices() if devices == "two" else jax.devices()
  with pytest.raises(ValueError, match=match):
    shd.device_array(_cfg(shape, dcn), devs)


def test_trainer_and_aot_report_build_their_mesh_with_the_same_function(monkeypatch, tmp_path):
  from reasonir_jax import train
  from reasonir_jax.scale import aot
  from reasonir_jax.configs import load_config
  config = load_config("tiny", [])
  built = []

  class Stop(Exception):
    pass

  def recording(mesh_cfg, devices=None):
    built.append((mesh_cfg, devices))
    raise Stop

  monkeypatch.setattr(shd, "make_mesh", recording)
  with pytest.raises(Stop):
    train.run(config, str(tmp_path))
  with pytest.raises(Stop):
    aot.build_mesh(config, jax.devices())
  assert len(built) == 2
  assert built[0][0] is config.mesh and built[1][0] is config.mesh
  assert built[1][1] == jax.devices()
