"""Helpers for the training tests: the tiny config, deterministic random batches, and the
environment of child training processes."""
import json
import os
import subprocess
import sys

import pytest

from reasonir_jax.training.synthetic import random_batch


# Smaller than configs/tiny.py so that each of the few compilations stays short; scanned layers
# as in the 8B recipe (their stacked parameters are what the mesh and checkpoint tests shard).
SMALL_MODEL = ("model.num_layers=1", "model.vocab_size=256", "model.hidden_size=32",
               "model.intermediate_size=64", "model.head_dim=8", "model.scan_layers=True")


def tiny_config(*overrides):
  from reasonir_jax.configs import load_config
  return load_config("tiny", [*SMALL_MODEL, *overrides])


@pytest.fixture(scope="session")
def make_tiny_config():
  return tiny_config


@pytest.fixture(scope="session")
def make_random_batch():
  return random_batch


POISON_ID = -7  # an input id no tokenizer gives


@pytest.fixture
def poisoned_encoder(monkeypatch):
  """Test hook for non-finite steps: the train step's embeddings (so its loss and gradients) are
  NaN for a side whose input_ids hold POISON_ID (the returned id). Patch before the first step
  is traced."""
  import jax.numpy as jnp
  from reasonir_jax.training import step as step_lib
  real = step_lib.embed

  def embed(model, input_ids, *rest):
    return real(model, input_ids, *rest) * jnp.where(jnp.any(input_ids == POISON_ID), jnp.nan, 1.0)
  monkeypatch.setattr(step_lib, "embed", embed)
  return POISON_ID


@pytest.fixture(scope="session")
def small_model_overrides():
  return list(SMALL_MODEL)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env():
  """Environment of a child training process: the repo importable, and the test run's persistent
  compilation cache (tests/conftest.py; a restarted run reuses the first one's compiles)."""
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="session")
def make_child_env():
  return child_env


def start_child(script_text: str, overrides, workdir, arg, tmp_path, env) -> subprocess.Popen:
  """Starts `script_text` (a child trainer; reads argv: overrides as JSON, workdir, arg) with
  stdout and stderr merged into one text pipe."""
  script = tmp_path / "child.py"
  script.write_text(script_text)
  return subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(workdir),
                           str(arg)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def start_child_trainer():
  return start_child
