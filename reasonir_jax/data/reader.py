"""Reading training rows back from TFRecord files, in file order (for tests, tools and checks).

The training input pipeline (pipeline.py) reads through an offset index instead; this reader
is the simple sequential path. Remote files (gs://...) are streamed: read front to back in
large buffered blocks (reasonir_jax.paths), one request per block rather than per record.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

from reasonir_jax import paths as paths_lib
from reasonir_jax.data.example_codec import ExampleParseError, example_bytes_to_row
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.tfrecord import CorruptRecordError, iter_records

log = logging.getLogger(__name__)


# Comma-separated globs and files, local or remote (the one implementation: paths.expand).
expand_paths = paths_lib.expand


def read_rows(pattern_or_paths: str | Sequence[str], skip_corrupt: bool = False,
              stats: dict | None = None) -> Iterator[TrainingRow]:
  """Yields every row of the files in order. A corrupt record or unparsable Example raises an
  error naming the file and byte offset; with skip_corrupt it is logged and counted in
  `stats["skipped_corrupt"]` instead."""
  stats = stats if stats is not None else {}
  stats.setdefault("skipped_corrupt", 0)
  stats.setdefault("rows_read", 0)

  def on_skip(path, offset, reason):
    stats["skipped_corrupt"] += 1
    log.warning("skipped corrupt record in %s at byte offset %d: %s", path, offset, reason)

  for path in expand_paths(pattern_or_paths):
    for offset, data in iter_records(path, skip_corrupt=skip_corrupt, on_skip=on_skip):
      try:
        row = example_bytes_to_row(data)
      except ExampleParseError as e:
        if not skip_corrupt:
          raise CorruptRecordError(path, offset, str(e)) from None
        on_skip(path, offset, str(e))
        continue
      stats["rows_read"] += 1
      yield row
