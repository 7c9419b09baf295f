"""The batch layout derived once from the config (reasonir_jax.data.layout): what the trainer
and the input pipeline both read from it, and the divisibility it checks."""
import pytest

from reasonir_jax.configs import load_config
from reasonir_jax.data.layout import BatchLayout

PACKED = ("data.packing=True", "data.pack_queries_per_row=2", "data.pack_passages_per_row=4")


def _layout(*overrides):
  return BatchLayout.from_config(load_config("tiny", ["train.global_batch_size=16",
                                                      "data.group_size=2", *overrides]))


def test_padded_layout_has_every_bucket_pair_and_no_packed_rows():
  layout = _layout("data.query_max_length=64", "data.passage_max_length=128")
  assert layout.num_texts == {"query": 16, "passage": 32}
  assert layout.packed_rows is None
  assert layout.step_shapes == [(q, p) for q in (32, 64) for p in (32, 64, 128)]


def test_packed_layout_has_one_shape_and_rows_per_process():
  layout = _layout(*PACKED)
  assert layout.step_shapes == [(128, 128)]
  assert layout.packed_rows == {"query": 8, "passage": 8}
  assert layout.local_batch(2) == 8
  assert layout.packed_rows_for(layout.local_batch(2)) == {"query": 4, "passage": 4}
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    layout.local_batch(3)
  with pytest.raises(ValueError, match="pack_passages_per_row=5 must be >= 1 and divide"):
    _layout(*PACKED[:-1], "data.pack_passages_per_row=5").packed_rows  # pylint: disable=expression-not-assigned


def test_mesh_divisibility_covers_batch_and_packed_rows():
  _layout(*PACKED).check_mesh(8)  # 8 query rows and 8 passage rows over 8 devices
  with pytest.raises(ValueError, match="must be a multiple of the 32 data-parallel devices"):
    _layout().check_mesh(32)
  with pytest.raises(ValueError, match=r"packed query rows \(8 = 16 texts"):
    _layout(*PACKED).check_mesh(16)  # 16 devices: 8 packed rows do not split


def test_the_input_pipeline_uses_the_layout_it_is_handed():
  import dataclasses
  from reasonir_jax.data.pipeline import make_host_iterator
  config = load_config("tiny", ["train.global_batch_size=16", "data.group_size=2", *PACKED])
  handed = BatchLayout.from_config(config)
  # A layout of other max lengths: the pipeline's rows follow it, not the config it re-reads.
  handed = dataclasses.replace(handed, query_max_length=112, passage_max_length=120)
  it = make_host_iterator(config, prefetch=0, process_index=0, process_count=1, layout=handed)
  batch = next(it)
  assert batch["query"]["input_ids"].shape == (8, 112)
  assert batch["passage"]["input_ids"].shape == (8, 120)
