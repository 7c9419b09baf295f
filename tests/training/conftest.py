"""Helpers for the training tests: the tiny config and deterministic random batches."""
import numpy as np
import pytest


# Smaller than configs/tiny.py so that each of the few compilations stays short.
SMALL_MODEL = ("model.num_layers=1", "model.vocab_size=256", "model.hidden_size=32",
               "model.intermediate_size=64", "model.head_dim=8")


def tiny_config(*overrides):
  from reasonir_jax.config import load_config
  return load_config("tiny", [*SMALL_MODEL, *overrides])


def random_batch(batch: int, group: int, query_len: int, passage_len: int, vocab: int = 256,
                 seed: int = 0) -> dict:
  """A host batch of the pipeline's structure: BOS + a 2-token prefix masked from pooling, right padding."""
  rng = np.random.default_rng(seed)

  def side(rows, length):
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    ids[:, 0] = 0
    lens = rng.integers(length // 2, length + 1, size=rows)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 2).astype(np.int32)
    pool = mask.copy()
    pool[:, :3] = 0
    return {"input_ids": ids, "attention_mask": mask, "pool_mask": pool}

  return {"query": side(batch, query_len), "passage": side(batch * group, passage_len)}


@pytest.fixture(scope="session")
def make_tiny_config():
  return tiny_config


@pytest.fixture(scope="session")
def make_random_batch():
  return random_batch


@pytest.fixture(scope="session")
def small_model_overrides():
  return list(SMALL_MODEL)
