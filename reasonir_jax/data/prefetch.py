"""Running the host pipeline ahead of the training step: a planning thread + tokenizer threads."""
from __future__ import annotations

import concurrent.futures
import json
import queue
import threading

from reasonir_jax.data.batching import PACKING_STATS, HostBatchIterator, add_counts


class PrefetchIterator:
  """Runs a HostBatchIterator ahead of the consumer: a background thread plans batches in order
  (reading, sampling: cheap and sequential, so the state stays exact) and `num_workers` threads
  tokenize them in parallel (the Rust tokenizer releases the GIL); batches come out in order.
  get_state() is the state after the last batch handed out. Counters that tokenizing produces
  (packing) are added here, in delivery order, so they resume exactly too."""

  def __init__(self, inner: HostBatchIterator, depth: int = 2, num_workers: int = 0):
    self.inner = inner
    self.depth = max(1, int(depth))
    self.num_workers = max(0, int(num_workers))
    self._pool = (concurrent.futures.ThreadPoolExecutor(self.num_workers, "input-tokenize")
                  if self.num_workers else None)
    self._reset_from_inner()
    self._thread = None
    self._error = None
    self._start()

  def _start(self):
    self._queue = queue.Queue(maxsize=self.depth + self.num_workers)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(self._queue, self._stop),
                                    daemon=True, name="input-prefetch")
    self._thread.start()

  def _work(self, q, stop):
    while not stop.is_set():
      try:
        raw = self.inner.plan_next()
        if self._pool is not None:
          batch = self._pool.submit(self.inner.tokenize_counted, raw)
        else:
          batch = concurrent.futures.Future()
          batch.set_result(self.inner.tokenize_counted(raw))
        item = (batch, self.inner.get_state(), self.inner.stats(), None)
      except BaseException as e:  # handed to the consumer, raised there
        item = (None, None, None, e)
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[3] is not None:
        return

  def _halt(self):
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None

  def __iter__(self):
    return self

  def __next__(self):
    if self._error is not None:
      raise self._error
    future, state, stats, error = self._queue.get()
    try:
      if error is not None:
        raise error
      batch, counts = future.result()
    except BaseException as e:
      self._error = e
      self._halt()
      raise
    # The planner's state does not hold the tokenizer's counters: carry their running totals.
    add_counts(self._counts, counts)
    state["stats"].update(self._counts)
    stats.update(self._counts)
    self._state, self._stats = state, stats
    return batch

  def _reset_from_inner(self):
    self._state, self._stats = self.inner.get_state(), self.inner.stats()
    self._counts = {k: self._stats[k] for k in PACKING_STATS if k in self._stats}

  def get_state(self):
    return json.loads(json.dumps(self._state))

  def set_state(self, state):
    self._halt()
    self.inner.set_state(state)
    self._reset_from_inner()
    self._error = None
    self._start()

  def stats(self):
    return json.loads(json.dumps(self._stats))

  def close(self):
    self._halt()
    if self._pool is not None:
      self._pool.shutdown(wait=True)
