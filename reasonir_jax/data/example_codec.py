"""`TrainingRow` <-> serialized `tf.train.Example` bytes (feature names in docs/data_format.md).

Uses the `tf.train.Example` protobuf classes shipped with tensorflow-datasets, so no TensorFlow
is needed. Every feature is a bytes_list of UTF-8 strings; the scalar fields hold exactly one
value, `positives` and `negatives` hold one value per text (possibly zero negatives). The optional
`weight` holds the row weight as its decimal text (`repr`, so it reads back exactly), written only
when it is not 1: files from before it existed, and rows of weight 1, are unchanged bytes.
"""
from __future__ import annotations

from tensorflow_datasets.proto import tf_example_pb2

from reasonir_jax.data.schema import TrainingRow

# Feature name -> TrainingRow field. Scalars hold exactly one string.
SCALAR_FEATURES = ("row_id", "source", "query", "query_instruction", "positive_instruction",
                   "negative_instruction", "metadata")
LIST_FEATURES = ("positives", "negatives")
ALL_FEATURES = SCALAR_FEATURES + LIST_FEATURES
WEIGHT_FEATURE = "weight"  # optional; absent = 1.0


class ExampleParseError(ValueError):
  """A record that is not a valid training-row Example (unparsable bytes or a bad feature)."""


def row_to_example_bytes(row: TrainingRow) -> bytes:
  """Serializes a row (validated first) into `tf.train.Example` bytes."""
  row.validate()
  example = tf_example_pb2.Example()
  feature = example.features.feature
  for name in SCALAR_FEATURES:
    value = getattr(row, name)
    if not isinstance(value, str):
      raise TypeError(f"row {row.row_id!r}: field {name!r} must be str, got {type(value).__name__}")
    feature[name].bytes_list.value.append(value.encode("utf-8"))
  for name in LIST_FEATURES:
    values = getattr(row, name)
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
      raise TypeError(f"row {row.row_id!r}: field {name!r} must be a list of str")
    # Touch the bytes_list so an empty list is still a present (empty) feature.
    feature[name].bytes_list.value.extend(v.encode("utf-8") for v in values)
  if row.weight != 1.0:
    feature[WEIGHT_FEATURE].bytes_list.value.append(repr(float(row.weight)).encode("utf-8"))
  return example.SerializeToString(deterministic=True)


def example_bytes_to_row(data: bytes) -> TrainingRow:
  """Parses `tf.train.Example` bytes back into a row; a missing or malformed feature raises
  ExampleParseError naming the feature."""
  example = tf_example_pb2.Example()
  try:
    example.ParseFromString(data)
  except Exception as e:  # protobuf's DecodeError
    raise ExampleParseError(f"unparsable tf.train.Example ({len(data)} bytes): {e}") from None
  feature = example.features.feature
  values = {}
  for name in ALL_FEATURES:
    if name not in feature:
      raise ExampleParseError(f"Example has no feature {name!r}")
    f = feature[name]
    if f.WhichOneof("kind") not in ("bytes_list", None):
      raise ExampleParseError(f"feature {name!r} is a {f.WhichOneof('kind')}, expected bytes_list")
    try:
      strings = [v.decode("utf-8") for v in f.bytes_list.value]
    except UnicodeDecodeError as e:
      raise ExampleParseError(f"feature {name!r} is not UTF-8: {e}") from None
    if name in SCALAR_FEATURES:
      if len(strings) != 1:
        raise ExampleParseError(f"feature {name!r} must hold 1 value, holds {len(strings)}")
      values[name] = strings[0]
    else:
      values[name] = strings
  if WEIGHT_FEATURE in feature:
    values["weight"] = _parse_weight(feature[WEIGHT_FEATURE])
  row = TrainingRow(**values)
  try:
    return row.validate()
  except ValueError as e:
    raise ExampleParseError(str(e)) from None


def _parse_weight(f) -> float:
  if f.WhichOneof("kind") != "bytes_list" or len(f.bytes_list.value) != 1:
    raise ExampleParseError(f"feature {WEIGHT_FEATURE!r} must be a bytes_list of 1 value")
  text = f.bytes_list.value[0]
  try:
    return float(text.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    raise ExampleParseError(f"feature {WEIGHT_FEATURE!r} is not a number: {text[:40]!r}") from None
