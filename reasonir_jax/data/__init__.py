"""Training data: the TFRecord row format, its reader/writer, converters and the input pipeline.

  schema.py         TrainingRow, the unit everything reads and writes
  tfrecord.py       TFRecord framing (CRC32C), offset index, checked reads
  example_codec.py  TrainingRow <-> tf.train.Example bytes
  writer.py         ShardWriter, write_rows (atomic, sharded)
  reader.py         read_rows (sequential), expand_paths
  convert.py        reference JSONL -> TFRecords (python -m reasonir_jax.data.convert)
  sources.py        config.data.sources, per-process record shares, Grain record datasets
  mixing.py         which records make up each batch (reference epoch plan, or weighted)
  layout.py         BatchLayout: rows per side, step shapes, divisibility (trainer and pipeline)
  batching.py       HostBatchIterator (a Grain iterator): rows -> tokenized, padded numpy batches
  pipeline.py       make_train_iterator / make_host_iterator (global jax.Arrays / numpy)
  sample.py         paths of the shipped sample data and tokenizer

Names are imported lazily so `import reasonir_jax.data` stays cheap.
"""

_EXPORTS = {
    "TrainingRow": "schema",
    "ShardWriter": "writer", "write_rows": "writer", "row_to_example_bytes": "writer",
    "example_bytes_to_row": "writer",
    "read_rows": "reader",
    "CorruptRecordError": "tfrecord",
    "make_train_iterator": "pipeline", "make_host_iterator": "pipeline",
    "sample_tokenizer_dir": "sample", "sample_rows_path": "sample", "sample_bright_dir": "sample",
    "materialize_sample_tfrecords": "sample",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    import importlib
    return getattr(importlib.import_module(f"reasonir_jax.data.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'reasonir_jax.data' has no attribute {name!r}")
