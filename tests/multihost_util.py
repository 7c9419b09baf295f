"""Shared by tests that start 2 real jax.distributed processes: a random global batch, the rows
of it one process supplies, and a free coordinator port. Child processes import it too (the
spawning test puts tests/ on their PYTHONPATH)."""
import socket

import numpy as np


def global_batch(vocab: int, b: int = 16, g: int = 2, lq: int = 8, lp: int = 12, seed: int = 3):
  """B queries of lq tokens and B*g passages of lp tokens, with ragged right padding."""
  rng = np.random.default_rng(seed)

  def side(rows, length):
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    mask = np.arange(length)[None] < rng.integers(length // 2, length + 1, size=rows)[:, None]
    return {"input_ids": ids, "attention_mask": mask.astype(np.int32),
            "pool_mask": mask.astype(np.int32)}

  return {"query": side(b, lq), "passage": side(b * g, lp)}


def local_rows(sharding, x):
  """This process's rows of global `x`, in order: the distinct row blocks its devices hold."""
  blocks = sorted({(i[0].start or 0, i[0].stop or x.shape[0])
                   for i in sharding.addressable_devices_indices_map(x.shape).values()})
  return np.concatenate([x[a:b] for a, b in blocks])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
