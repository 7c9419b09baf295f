"""Per-row loss weights in the data path: the row schema, the Example bytes, the JSONL converter
and the host batches (batch["row"]["weight"])."""
import json

import numpy as np
import pytest

from reasonir_jax.configs import load_config
from reasonir_jax.data import convert, pipeline
from reasonir_jax.data.example_codec import ExampleParseError, example_bytes_to_row, row_to_example_bytes
from reasonir_jax.data.reader import read_rows
from reasonir_jax.data.sample import sample_tokenizer_dir
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.writer import write_rows
from reasonir_jax.tokenization import PromptTokenizer


def _row(i=0, **kw):
  return TrainingRow(row_id=f"r{i}", source="s", query=f"query {i} about osmosis", positives=[f"positive {i}"],
                     negatives=[f"negative {i}"], **kw)


@pytest.mark.parametrize("weight,match", [
    (-0.5, "must be finite and >= 0, got -0.5"),
    (float("nan"), "must be finite and >= 0, got nan"),
    (float("inf"), "must be finite and >= 0, got inf"),
    ("2", "must be a number, got str"),
    (True, "must be a number, got bool"),
])
def test_bad_weights_are_refused_naming_the_row(weight, match):
  with pytest.raises(ValueError, match=f"row 'r0': weight {match}"):
    _row(weight=weight).validate()


def test_weight_round_trips_exactly_and_weight_one_keeps_the_old_bytes():
  for w in (0.0, 0.3, 2, 1e-7, 12.5):
    assert example_bytes_to_row(row_to_example_bytes(_row(weight=w))).weight == w
  default = row_to_example_bytes(_row())
  assert row_to_example_bytes(_row(weight=1.0)) == default
  assert b"weight" not in default  # rows written before weights existed read as weight 1
  assert example_bytes_to_row(default).weight == 1.0


def test_unparsable_weight_feature_is_a_parse_error():
  from tensorflow_datasets.proto import tf_example_pb2
  ex = tf_example_pb2.Example.FromString(row_to_example_bytes(_row(weight=0.5)))
  ex.features.feature["weight"].bytes_list.value[0] = b"heavy"
  with pytest.raises(ExampleParseError, match="feature 'weight' is not a number"):
    example_bytes_to_row(ex.SerializeToString())
  ex.features.feature["weight"].bytes_list.value[0] = b"-1"
  with pytest.raises(ExampleParseError, match="weight must be finite and >= 0"):
    example_bytes_to_row(ex.SerializeToString())


def _jsonl(path, objs):
  path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def test_converter_reads_weights_and_refuses_bad_ones_naming_file_and_line(tmp_path):
  good = {"query": ["i", "q one"], "pos": [["", "p one"]]}
  _jsonl(tmp_path / "w.jsonl", [dict(good, weight=0.25, id="a"), dict(good, id="b"), dict(good, weight=3, id="c")])
  convert.convert(str(tmp_path / "w.jsonl"), str(tmp_path / "out"), 1, progress=False)
  rows = {r.row_id: r for r in read_rows(str(tmp_path / "out" / "w-*.tfrecord"))}
  assert {k: r.weight for k, r in rows.items()} == {"a": 0.25, "b": 1.0, "c": 3.0}
  assert "weight" not in json.loads(rows["a"].metadata)  # a field, not provenance
  for bad, match in ((-1, "must be finite and >= 0, got -1"), ("high", "must be a number, got str"), (None, "must be a number")):
    _jsonl(tmp_path / "bad.jsonl", [good, dict(good, weight=bad)])
    with pytest.raises(convert.ConvertError, match=f"bad.jsonl:2: field 'weight' {match}"):
      convert.convert(str(tmp_path / "bad.jsonl"), str(tmp_path / "out2"), 1, progress=False)
  (tmp_path / "nan.jsonl").write_text('{"query": ["i", "q"], "pos": [["", "p q"]], "weight": NaN}\n')
  with pytest.raises(convert.ConvertError, match="nan.jsonl:1: field 'weight' must be finite"):
    convert.convert(str(tmp_path / "nan.jsonl"), str(tmp_path / "out3"), 1, progress=False)


def test_host_batches_carry_each_query_rows_weight(tmp_path):
  rows = [_row(i, weight=0.5 * i) for i in range(12)]
  write_rows(rows, str(tmp_path), "w", 2)
  c = load_config("tiny")
  c.data.sources = f"w={tmp_path}/w-*.tfrecord"
  c.train.global_batch_size = 4
  c.data.group_size = 2
  c.data.prefetch = 0
  it = pipeline.make_host_iterator(c, PromptTokenizer(sample_tokenizer_dir()), process_index=0, process_count=1)
  by_query = {r.query: r.weight for r in rows}
  for _ in range(3):
    raw = it.plan_next()
    assert raw.weights == [by_query[q] for q in raw.queries]
    batch = it.tokenize(raw)
    assert batch["row"]["weight"].dtype == np.float32
    np.testing.assert_array_equal(batch["row"]["weight"], np.float32(raw.weights))
