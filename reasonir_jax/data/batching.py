"""One process's share of each training batch, as numpy arrays: the host side of the pipeline.

`HostBatchIterator` takes the records of each batch from a plan every process computes
identically (mixing.py: the reference's epoch plan, or weighted draws), reads rows through Grain
(sources.py), samples one positive and group_size-1
negatives (with repetition when a row has too few), drops rows whose instruction alone fills
max_length (counted), tokenizes with `PromptTokenizer` and pads to bucket lengths, or with
config.data.packing packs the texts into fixed [rows, max_length] budgets (reasonir_jax.packing).
A batch whose texts do not fit its budget has its longest texts cut to the largest common
length that fits, never into the template prefix (no row or text is dropped); such batches,
texts and cut tokens are counted in stats() ("packing_*") and logged.

Its state is a small JSON dict (the batch counter, the mixing mode and its position: epoch and
batch within it, or one read cursor per source; the stats);
every batch is a pure function of (seed, state), so restoring the state continues exactly.
It is a Grain `DatasetIterator`: pipeline.py runs it ahead of the step in Grain's prefetch
thread, and Grain's checkpoint handler saves its state as an item of the Orbax checkpoint.
Planning (`plan_next`: reading, sampling) is sequential and cheap; tokenizing a batch is a pure
function, split over `num_workers` threads.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import logging
import threading
from typing import Any

import grain
import numpy as np

from reasonir_jax.data import mixing as mixing_lib
from reasonir_jax.data import sources as sources_lib
from reasonir_jax.data.example_codec import ExampleParseError, example_bytes_to_row
from reasonir_jax.data.layout import BatchLayout
from reasonir_jax.data.reader import expand_paths
from reasonir_jax.data.schema import TrainingRow
from reasonir_jax.data.tfrecord import CorruptRecordError
from reasonir_jax.packing import cut_lengths, fit_to_rows, packed_arrays
from reasonir_jax.tokenization import PromptTokenizer, bucket_length, pad_batch

log = logging.getLogger(__name__)

# 3: record shares (2: file shares, whose positions do not carry over); 2 added the mixing mode.
STATE_VERSION = 3
# Packing counters in stats() (with config.data.packing): batches with a cut, texts cut, tokens
# cut, and kept tokens / token slots (the fill rate). Resumable, like every other counter.
PACKING_STATS = ("packing_overflow_batches", "packing_cut_texts", "packing_cut_tokens",
                 "packing_tokens", "packing_slots")
Batch = dict[str, dict[str, np.ndarray]]


def process_info(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def _as_prompt_tokenizer(tokenizer, config) -> PromptTokenizer:
  if isinstance(tokenizer, PromptTokenizer):
    _check_recipe(tokenizer, config)
    return tokenizer
  if tokenizer is None:
    # The trainer's choice: config.data.tokenizer, else the model directory's, else the sample's.
    from reasonir_jax.tokenization import resolve_tokenizer
    tokenizer = resolve_tokenizer(config.data.get("tokenizer", ""), config.get("init_from", ""))
  m = config.model
  return PromptTokenizer(tokenizer, template=m.get("template", "reasonir"),
                         pooling=m.get("pooling", "mean"))


def _check_recipe(tok: PromptTokenizer, config) -> None:
  for name in ("template", "pooling"):
    want = config.model.get(name, getattr(tok, name))
    if getattr(tok, name) != want:
      raise ValueError(f"the PromptTokenizer's {name} {getattr(tok, name)!r} is not "
                       f"config.model.{name}={want!r}")


def _resolve_pattern(pattern: str) -> str:
  if pattern == "sample":
    from reasonir_jax.data.sample import default_sample_tfrecords
    return default_sample_tfrecords()
  return pattern


class HostBatchIterator(grain.DatasetIterator):
  """Yields this process's share of each global batch as numpy arrays (see module docstring).
  A Grain iterator, so Grain's prefetch and checkpointing take it as it is. `num_workers` > 1
  threads tokenize the texts of a batch in parallel (the Rust tokenizer releases the GIL)."""

  def __init__(self, config, tokenizer, *, process_index: int | None = None,
               process_count: int | None = None, local_batch_size: int | None = None,
               num_workers: int = 0, layout: BatchLayout | None = None):
    super().__init__()
    self._pool = None  # the tokenizer threads, made last (close() may run after a failed init)
    d = config.data
    self.process_index, self.process_count = process_info(process_index, process_count)
    # The trainer's layout when it hands one over (train.run derives it once), else the config's.
    layout = layout or BatchLayout.from_config(config)
    if local_batch_size is None:
      local_batch_size = layout.local_batch(self.process_count)
    self.batch_size = int(local_batch_size)
    self.group_size = int(d.group_size)
    if self.group_size < 1:
      raise ValueError(f"data.group_size must be >= 1, got {self.group_size}")
    self.query_max_length = layout.query_max_length
    self.passage_max_length = layout.passage_max_length
    self.buckets = layout.buckets
    self.packing = layout.packing
    self.packed_rows = layout.packed_rows_for(self.batch_size) if self.packing else None
    self.mixing = mixing_lib.check_mode(d.get("mixing", "reference"))
    self.skip_corrupt = bool(d.skip_corrupt)
    self.seed = int(config.seed) * 1_000_003 + int(d.shuffle_seed)
    self.tok = _as_prompt_tokenizer(tokenizer, config)
    self._owner_thread = threading.current_thread()
    self._local = threading.local()

    self.specs = sources_lib.parse_sources(d.sources)
    self._counters = {"batches": 0, "rows_read": 0, "rows_used": 0, "dropped_long_instruction": 0,
                   "skipped_corrupt": 0, "rows_without_negatives": 0,
                   "rows_per_source": {s.name: 0 for s in self.specs}}
    if self.packing:
      self._counters.update(dict.fromkeys(PACKING_STATS, 0))
    indexer = sources_lib.FileIndexer(self.skip_corrupt)
    self.shares, self.datasets = [], []
    for i, spec in enumerate(self.specs):
      share = sources_lib.open_share(spec.name, expand_paths(_resolve_pattern(spec.pattern)),
                                     indexer, self.process_index, self.process_count)
      self._counters["skipped_corrupt"] += share.skipped_corrupt
      self.shares.append(share)
      self.datasets.append(sources_lib.shuffled_records(share.records, seed=self.seed * 131 + i))
      log.info("source %s: records %d..%d of %d (in %d of %d files) on process %d/%d", spec.name,
               share.share.start, share.share.stop - 1, share.total, share.files_read,
               share.num_files, self.process_index, self.process_count)
    self.mixer = self._make_mixer(config)
    self._batch_index = 0
    self._workers = int(num_workers)
    self._pool = (concurrent.futures.ThreadPoolExecutor(self._workers, "input-tokenize")
                  if self._workers > 1 else None)

  def _make_mixer(self, config):
    names = [s.name for s in self.specs]
    local = [len(share) for share in self.shares]
    if self.mixing == "weighted":
      return mixing_lib.WeightedMixer(names, [s.weight for s in self.specs], local,
                                      self.batch_size, self.process_index, self.seed,
                                      bool(config.data.single_source_batches))
    weighted = [f"{s.name}:{s.weight:g}" for s in self.specs if s.weight != 1.0]
    if weighted:
      raise ValueError(
          f"config.data.sources gives weights ({', '.join(weighted)}) but config.data.mixing is "
          f"'reference', which draws sources in proportion to their size; drop the weights or "
          f"set --config.data.mixing=weighted")
    if not config.data.single_source_batches:
      raise ValueError("config.data.single_source_batches=False needs config.data.mixing="
                       "'weighted' (the reference plan mixes sources only in remainder batches)")
    # Equal shares: every process holds the same number of records of each source.
    counts = np.tile(np.asarray(local, np.int64), (self.process_count, 1))
    return mixing_lib.ReferenceMixer(names, counts, self.batch_size, self.process_index,
                                     self.seed)

  # -- state ---------------------------------------------------------------------------------
  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "batch_index": self._batch_index, "mixing": self.mixing,
            **self.mixer.get_state(self._batch_index), "process_index": self.process_index,
            "process_count": self.process_count, "stats": json.loads(json.dumps(self._counters))}

  def set_state(self, state: dict[str, Any] | bytes | str) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if state.get("version") in (1, 2) and state.get("process_count", 1) != 1:
      # One process's share was every file, in order, as it is now; a share of files is not one
      # of records.
      raise ValueError(
          f"input pipeline state version {state['version']} of {state['process_count']} "
          f"processes was written when processes split the data by file; the input is now split "
          f"by record, so its position does not exist here: start a new workdir (from an export "
          f"of the old one: --config.init_from)")
    if state.get("version") == 1:
      state = {**state, "mixing": "weighted"}
    elif state.get("version") not in (2, STATE_VERSION):
      raise ValueError(f"input pipeline state version {state.get('version')!r}, expected {STATE_VERSION}")
    if state["mixing"] != self.mixing:
      raise ValueError(f"input pipeline state was written with config.data.mixing="
                       f"{state['mixing']!r}, this run has {self.mixing!r}; resume with "
                       f"--config.data.mixing={state['mixing']}")
    if (state["process_index"], state["process_count"]) != (self.process_index, self.process_count):
      raise ValueError(
          f"input pipeline state is of process {state['process_index']}/{state['process_count']},"
          f" this is {self.process_index}/{self.process_count}: a position is in one process's "
          f"share of the records, and the shares depend on the process count; resume with "
          f"{state['process_count']} processes, or start a new workdir from an export "
          f"(--config.init_from)")
    self.mixer.set_state(state)
    self._batch_index = int(state["batch_index"])
    self._counters = json.loads(json.dumps(state["stats"]))
    if self.packing:
      for k in PACKING_STATS:
        self._counters.setdefault(k, 0)

  def stats(self) -> dict[str, Any]:
    return json.loads(json.dumps(self._counters))

  # -- batches -------------------------------------------------------------------------------
  def _read(self, s: int, pos: int) -> tuple[TrainingRow, int] | None:
    """Reads the record of source s at stream position pos; None if it was corrupt and skipped."""
    try:
      path, offset, data = self.datasets[s][pos]
    except CorruptRecordError as e:
      return self._skip(e)
    try:
      row = example_bytes_to_row(data)
    except ExampleParseError as e:
      return self._skip(CorruptRecordError(path, offset, str(e)))
    self._counters["rows_read"] += 1
    return row, pos

  def _skip(self, error: CorruptRecordError):
    if not self.skip_corrupt:
      raise error
    self._counters["skipped_corrupt"] += 1
    log.warning("skipped %s", error)
    return None

  def _fits(self, row: TrainingRow) -> bool:
    """False when an instruction's prompt alone reaches max_length (the row is dropped)."""
    if self.tok.reserved(row.query_instruction or None) >= self.query_max_length:
      return False
    if self.tok.reserved(row.positive_instruction or None) >= self.passage_max_length:
      return False
    if (self.group_size > 1 and row.negatives and
        self.tok.reserved(row.negative_instruction or None) >= self.passage_max_length):
      return False
    return True

  def _pick_passages(self, row: TrainingRow, s: int, pos: int,
                     fallback: list[str]) -> list[tuple[str, str]]:
    """(instruction, text) of the positive and group_size-1 negatives, deterministic in
    (seed, source, read position)."""
    rng = np.random.default_rng([self.seed, s, pos, self.process_index, 2])
    out = [(row.positive_instruction, row.positives[int(rng.integers(len(row.positives)))])]
    need = self.group_size - 1
    if need <= 0:
      return out
    negs = row.negatives
    inst = row.negative_instruction
    if not negs:
      # No mined negative: use other rows' positives (plain in-batch negatives), counted.
      self._counters["rows_without_negatives"] += 1
      negs, inst = fallback, row.positive_instruction
      if not negs:
        raise ValueError(
            f"row {row.row_id!r} of source {self.specs[s].name!r} has no negatives and the batch "
            f"has no other positive to use instead (group_size {self.group_size}); add hard "
            f"negatives or use a larger batch")
    idx = rng.choice(len(negs), size=need, replace=len(negs) < need)
    return out + [(inst, negs[int(i)]) for i in idx]

  def __iter__(self):
    return self

  def plan_next(self) -> "RawBatch":
    """Reads and samples the next batch's texts (sequential, cheap) and advances the state."""
    rows: list[tuple[TrainingRow, int, int]] = []
    taken = set()
    for s, positions in self.mixer.rows(self._batch_index):
      # The row's record, else (too long an instruction, corrupt) the next ones of the source;
      # never a record the batch already holds.
      for pos in positions:
        if (s, pos) in taken:
          continue
        taken.add((s, pos))
        got = self._read(s, pos)
        if got is None:
          continue
        row, pos = got
        if self._fits(row):
          break
        self._counters["dropped_long_instruction"] += 1
      else:  # a whole epoch without a usable row: would loop forever
        raise ValueError(
            f"source {self.specs[s].name!r}: no usable row (not already in the batch) in a "
            f"full pass over its "
            f"{len(self.shares[s])} records of this process's share (all corrupt, or every instruction "
            f"reaches max_length {self.query_max_length}/{self.passage_max_length}); "
            f"stats: {self._counters}")
      rows.append((row, s, pos))
    all_positives = [r.positives[0] for r, _, _ in rows]
    raw = RawBatch([], [], [], [], [])
    for j, (row, s, pos) in enumerate(rows):
      raw.queries.append(row.query)
      raw.query_instructions.append(row.query_instruction or None)
      raw.weights.append(row.weight)
      others = [p for p in all_positives if p not in row.positives]
      for inst, text in self._pick_passages(row, s, pos, others):
        raw.passages.append(text)
        raw.passage_instructions.append(inst or None)
      self._counters["rows_per_source"][self.specs[s].name] += 1
    self._counters["rows_used"] += len(rows)
    self._counters["batches"] += 1
    self._batch_index += 1
    return raw

  def tokenize(self, raw: "RawBatch") -> Batch:
    """Tokenizes and pads a planned batch; a pure function (safe to run in worker threads)."""
    return self.tokenize_counted(raw)[0]

  def tokenize_counted(self, raw: "RawBatch") -> tuple[Batch, dict[str, int]]:
    """(batch, its packing counters): the counters are added to stats() in delivery order, so
    they are part of the resumable state."""
    q_enc = self._encode(raw.queries, raw.query_instructions, self.query_max_length)
    p_enc = self._encode(raw.passages, raw.passage_instructions, self.passage_max_length)
    tok = self._thread_tokenizer()
    rows = {"weight": np.asarray(raw.weights, np.float32)}  # per query, in query order
    if self.packing:
      counts = dict.fromkeys(PACKING_STATS, 0)
      return ({"query": self._pack(tok, q_enc, raw.query_instructions, "query",
                                   self.query_max_length, counts),
               "passage": self._pack(tok, p_enc, raw.passage_instructions, "passage",
                                     self.passage_max_length, counts),
               "row": rows}, counts)
    lq = bucket_length(max(len(ids) for ids, _ in q_enc), self.buckets, self.query_max_length)
    lp = bucket_length(max(len(ids) for ids, _ in p_enc), self.buckets, self.passage_max_length)
    return ({"query": pad_batch(q_enc, lq, self.tok.pad_id),
             "passage": pad_batch(p_enc, lp, self.tok.pad_id), "row": rows}, {})

  def _pack(self, tok: PromptTokenizer, encoded, instructions, side: str, row_length: int,
            counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Packed rows of one side; pool ids are global text indices (this process's block)."""
    lengths = [len(ids) for ids, _ in encoded]
    # A cut never reaches into the template prefix or an appended EOS: a text keeps a token to
    # pool if it had one (one whose first characters merged into the prefix's last token may
    # have none).
    mins = [tok.reserved(i) + 1 for i in instructions]
    rows, cap = fit_to_rows(lengths, row_length, self.packed_rows[side], mins)
    kept = cut_lengths(lengths, cap, mins)
    cut = [n - k for n, k in zip(lengths, kept) if k < n]
    counts["packing_tokens"] += sum(kept)
    counts["packing_slots"] += self.packed_rows[side] * row_length
    if cut:
      counts["packing_overflow_batches"] = 1  # one per batch, whichever side overflowed
      counts["packing_cut_texts"] += len(cut)
      counts["packing_cut_tokens"] += sum(cut)
      log.warning("packing: %d %s texts (%d tokens) over the %d x %d budget: the longest %d "
                  "cut to %d tokens", len(lengths), side, sum(lengths), self.packed_rows[side],
                  row_length, len(cut), cap)
    encoded = [tok.cut(e, k) for e, k in zip(encoded, kept)]
    return packed_arrays(encoded, rows, row_length, self.tok.pad_id,
                         text_offset=self.process_index * len(encoded))

  def _encode(self, texts: list[str], instructions: list[str | None], max_length: int):
    """Tokenizes texts in order; with worker threads, in contiguous chunks (same result)."""
    if self._pool is None or len(texts) < 2:
      return self._thread_tokenizer().encode(texts, instructions, max_length)
    step = -(-len(texts) // self._workers)
    chunks = [self._pool.submit(lambda a: self._thread_tokenizer().encode(
        texts[a:a + step], instructions[a:a + step], max_length), a)
              for a in range(0, len(texts), step)]
    return [enc for chunk in chunks for enc in chunk.result()]

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)
    super().close()

  def _thread_tokenizer(self) -> PromptTokenizer:
    # HF fast tokenizers reconfigure their Rust backend on every call, which is not safe to
    # share between threads ("Already borrowed"): each worker thread gets its own copy.
    if threading.current_thread() is self._owner_thread:
      return self.tok
    local = self._local
    if not hasattr(local, "tok"):
      local.tok = PromptTokenizer(copy.deepcopy(self.tok.tokenizer), self.tok.template,
                                  self.tok.pooling)
    return local.tok

  def __next__(self) -> Batch:
    batch, counts = self.tokenize_counted(self.plan_next())
    add_counts(self._counters, counts)
    return batch


def add_counts(stats: dict[str, Any], counts: dict[str, int]) -> None:
  for k, v in counts.items():
    stats[k] = stats.get(k, 0) + v


@dataclasses.dataclass
class RawBatch:
  """The texts of one batch before tokenization (passages of query i at i*G .. i*G+G-1)."""
  queries: list[str]
  query_instructions: list[str | None]
  passages: list[str]
  passage_instructions: list[str | None]
  weights: list[float]  # TrainingRow.weight of each query's row
