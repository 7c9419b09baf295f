"""A checkpoint that does not match the config fails before reading, naming each tensor."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from reasonir_jax.training.checkpoint import check_stored


def _sds(shape):
  return jax.ShapeDtypeStruct(shape, np.float32)


def test_check_stored_names_missing_unexpected_and_reshaped_tensors(tmp_path):
  item = tmp_path / "params"
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(item, {"embed_tokens": np.zeros((8, 4), np.float32),
                    "layers.mlp.up_proj": np.zeros((2, 4, 6), np.float32),
                    "old_head": np.zeros((3,), np.float32)})
  ckptr.wait_until_finished()

  check_stored(str(item), {"embed_tokens": _sds((8, 4)), "layers.mlp.up_proj": _sds((2, 4, 6)),
                           "old_head": _sds((3,))})  # a match passes

  with pytest.raises(ValueError) as err:
    check_stored(str(item), {"embed_tokens": _sds((8, 4)), "layers.mlp.up_proj": _sds((2, 4, 12)),
                             "final_norm.scale": _sds((4,))})
  msg = str(err.value)
  assert str(item) in msg
  assert "missing tensor 'final_norm.scale'" in msg
  assert "unexpected tensor 'old_head'" in msg
  assert "'layers.mlp.up_proj' is stored as (2, 4, 6), the config needs (2, 4, 12)" in msg
