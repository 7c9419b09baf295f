"""Random host batches in the input pipeline's structure, for tests, benchmarks and dry runs."""
from __future__ import annotations

import numpy as np


def random_batch(batch: int, group: int, query_len: int, passage_len: int, vocab: int = 256,
                 seed: int = 0, prefix_len: int = 3) -> dict:
  """{"query": [batch, query_len], "passage": [batch * group, passage_len]} of input_ids,
  attention_mask and pool_mask, and "row": {"weight": ones [batch]}: BOS (id 0) + a prefix masked from pooling, random lengths of at
  least half the row, right padding with id 2."""
  rng = np.random.default_rng(seed)

  def side(rows, length):
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    ids[:, 0] = 0
    lens = rng.integers(length // 2, length + 1, size=rows)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 2).astype(np.int32)
    pool = mask.copy()
    pool[:, :prefix_len] = 0
    return {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}

  return {"query": side(batch, query_len), "passage": side(batch * group, passage_len),
          "row": {"weight": np.ones(batch, np.float32)}}
