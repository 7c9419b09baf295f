"""Writer/reader round trip, the Example schema as TensorFlow's parsers see it, atomic writes."""
import glob
import json

import numpy as np
import pytest

from reasonir_jax.data.example_codec import LIST_FEATURES, SCALAR_FEATURES
from reasonir_jax.data.reader import read_rows
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.writer import (ShardWriter, example_bytes_to_row, row_to_example_bytes,
                                      write_rows)


def _rows():
  return [
      TrainingRow(row_id="u1", source="hq", query="Ελληνικά 東京 café 🙂 ∑∫√?",
                  positives=["naïve positive — ünïcödé"], negatives=["négatif"],
                  query_instruction="Given a biology post, retrieve relevant passages",
                  metadata=json.dumps({"generator": "x", "sampling": {"temperature": 0.0}})),
      TrainingRow(row_id="empty-inst", source="public", query="q", positives=["p"]),
      TrainingRow(row_id="many", source="vl", query="q2", positives=["p1", "p2"],
                  negatives=[f"negative {i}" for i in range(50)], negative_instruction="neg inst",
                  positive_instruction="pos inst"),
      TrainingRow(row_id="long", source="vl", query="long " * 20000, positives=["x" * 300000],
                  negatives=["y\n" * 1000]),
  ]


def test_example_round_trip():
  for row in _rows():
    assert example_bytes_to_row(row_to_example_bytes(row)) == row


def test_write_rows_round_trip_and_sharding(tmp_path):
  rows = _rows() * 3
  for i, r in enumerate(rows):
    rows[i] = TrainingRow(**{**r.__dict__, "row_id": f"{r.row_id}-{i}"})
  paths = write_rows(rows, str(tmp_path), "train", num_shards=5)
  assert [p.rsplit("/", 1)[1] for p in paths] == [f"train-{i:05d}-of-00005.tfrecord" for i in range(5)]
  back = list(read_rows(str(tmp_path / "train-*-of-00005.tfrecord")))
  assert sorted(back, key=lambda r: r.row_id) == sorted(rows, key=lambda r: r.row_id)
  # Round-robin: shard sizes differ by at most one.
  sizes = [len(list(read_rows(p))) for p in paths]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(rows)


def test_tfds_numpy_example_parser_reads_our_bytes():
  """TensorFlow Datasets' parser (the numpy twin of tf.io.parse_single_example) reads the schema."""
  from tensorflow_datasets.core import example_parser
  info = example_parser.feature_lib.TensorInfo
  specs = {n: info(shape=(), dtype=np.object_) for n in SCALAR_FEATURES}
  specs.update({n: info(shape=(None,), dtype=np.object_) for n in LIST_FEATURES})
  parser = example_parser.ExampleParserNp(specs)
  row = _rows()[0]
  parsed = parser.parse_example(row_to_example_bytes(row))
  assert parsed["query"].decode() == row.query
  assert [v.decode() for v in parsed["negatives"]] == row.negatives
  assert parsed["positive_instruction"] == b""
  empty = parser.parse_example(row_to_example_bytes(_rows()[1]))
  assert empty["negatives"].shape == (0,)


def test_proto_fields_are_bytes_lists():
  from tensorflow_datasets.proto import tf_example_pb2
  ex = tf_example_pb2.Example.FromString(row_to_example_bytes(_rows()[2]))
  feats = ex.features.feature
  assert set(feats) == set(SCALAR_FEATURES) | set(LIST_FEATURES)
  assert all(feats[n].WhichOneof("kind") == "bytes_list" for n in feats)
  assert len(feats["negatives"].bytes_list.value) == 50


def test_shard_writer_is_atomic(tmp_path):
  path = str(tmp_path / "a-00000-of-00001.tfrecord")
  with pytest.raises(RuntimeError):
    with ShardWriter(path) as w:
      w.write(_rows()[0])
      assert glob.glob(str(tmp_path / "*")) == [w.tmp_path]  # only the temp name while writing
      raise RuntimeError("crash")
  assert glob.glob(str(tmp_path / "*")) == []

  def failing():
    yield _rows()[0]
    raise RuntimeError("generator failed")
  with pytest.raises(RuntimeError):
    write_rows(failing(), str(tmp_path), "b", num_shards=2)
  assert glob.glob(str(tmp_path / "*")) == []


def test_invalid_rows_are_rejected():
  with pytest.raises(ValueError, match="empty query"):
    row_to_example_bytes(TrainingRow(row_id="x", source="s", query="", positives=["p"]))
  with pytest.raises(ValueError, match=r"row 'x': empty query, positives\[1\], negatives\[0\]"):
    row_to_example_bytes(TrainingRow(row_id="x", source="s", query=" ", positives=["p", "\n"],
                                     negatives=["\t", "n"]))
  with pytest.raises(TypeError, match="negatives"):
    row_to_example_bytes(TrainingRow(row_id="x", source="s", query="q", positives=["p"],
                                     negatives="not a list"))


def test_a_row_with_an_empty_text_in_older_files_reads_as_corrupt(tmp_path, monkeypatch):
  from reasonir_jax.data.tfrecord import CorruptRecordError
  rows = [TrainingRow(row_id=f"r{i}", source="s", query="q", positives=["p"],
                      negatives=["" if i == 1 else "n"]) for i in range(3)]
  monkeypatch.setattr(TrainingRow, "validate", lambda self: self)  # a writer without the check
  [path] = write_rows(rows, str(tmp_path), "old", 1)
  monkeypatch.undo()
  with pytest.raises(CorruptRecordError, match=r"old-00000-of-00001.tfrecord.*negatives\[0\]"):
    list(read_rows(path))
  stats = {}
  assert [r.row_id for r in read_rows(path, skip_corrupt=True, stats=stats)] == ["r0", "r2"]
  assert stats["skipped_corrupt"] == 1
