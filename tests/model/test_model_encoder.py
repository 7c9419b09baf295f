"""`Encoder`: matches the PyTorch snippet of docs/hf_usage.md, keeps order, pools text only."""
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

TEXTS = [
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Binary search halves the interval.",
    "x",
    "Plate tectonics explains earthquakes, volcanoes and the drift of continents over time. " * 3,
    "Unicode: café, naïve, 東京",
]
INSTRUCTION = "Given a biology post, retrieve relevant passages that help answer the post"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def encoder(hf_dir):
  from reasonir_jax import Encoder
  return Encoder.from_pretrained(hf_dir, dtype="float32", show_progress=False)


@pytest.fixture(scope="module")
def export_dir(encoder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export"))
  encoder.save_pretrained(out)
  return out


def _doc_snippet():
  """The python block of docs/hf_usage.md, without its final usage lines."""
  text = open(os.path.join(REPO, "docs", "hf_usage.md")).read()
  code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  namespace = {}
  exec(code.split("\nmodel, tokenizer = load(")[0], namespace)  # pylint: disable=exec-used
  return namespace


def test_doc_snippet_matches_encode(encoder, export_dir):
  snippet = _doc_snippet()
  model, tokenizer = snippet["load"](export_dir, dtype=torch.float32)
  for instruction in (INSTRUCTION, None):
    ref = snippet["encode"](model, tokenizer, TEXTS, instruction=instruction, max_length=64).numpy()
    ours = encoder.encode(TEXTS, instruction=instruction, batch_size=2, max_length=64)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
  # The library copy of the snippet gives the same numbers.
  from reasonir_jax.hf.torch_reference import encode as torch_encode
  np.testing.assert_allclose(torch_encode(model, tokenizer, TEXTS, INSTRUCTION).numpy(),
                             snippet["encode"](model, tokenizer, TEXTS, INSTRUCTION).numpy(),
                             atol=1e-6)


def test_order_buckets_and_batch_independence(encoder):
  batched = encoder.encode(TEXTS, instruction=INSTRUCTION, batch_size=2, max_length=64)
  alone = np.stack([encoder.encode([t], instruction=INSTRUCTION, batch_size=1, max_length=64)[0]
                    for t in TEXTS])
  np.testing.assert_allclose(batched, alone, atol=2e-5)
  perm = [3, 0, 4, 2, 1]
  shuffled = encoder.encode([TEXTS[i] for i in perm], instruction=INSTRUCTION, batch_size=2,
                            max_length=64)
  np.testing.assert_allclose(shuffled, batched[perm], atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(batched, axis=-1), 1.0, atol=1e-5)
  # Different texts differ; the instruction changes the query embedding.
  assert np.abs(batched[0] - batched[1]).max() > 1e-3
  docs = encoder.encode(TEXTS, batch_size=2, max_length=64)
  assert np.abs(docs[0] - batched[0]).max() > 1e-3
  assert encoder.encode([], max_length=64).shape == (0, 64)
  # One compilation per (batch, bucket) shape, not per call.
  assert encoder._embed._cache_size() <= 4  # pylint: disable=protected-access


def test_instruction_tokens_are_not_pooled(encoder, tokenizer_dir):
  from reasonir_jax.tokenization import BOS_TOKEN, prompt_prefix
  tok = encoder.tokenizer
  prefix_ids = encoder.prompt_tokenizer.prefix_ids(INSTRUCTION)
  direct = tok(BOS_TOKEN + prompt_prefix(INSTRUCTION), add_special_tokens=False)["input_ids"]
  assert list(prefix_ids) == direct and direct.count(tok.bos_token_id) == 1
  (ids, prefix_len), = encoder.prompt_tokenizer.encode([TEXTS[0]], INSTRUCTION, 64)
  assert prefix_len == len(direct)
  hidden = np.asarray(encoder.model(np.array([ids], np.int32), np.ones((1, len(ids)), np.int32)))
  mean = hidden[0, prefix_len:].mean(0)
  expected = mean / np.linalg.norm(mean)
  got = encoder.encode([TEXTS[0]], instruction=INSTRUCTION, max_length=64)[0]
  np.testing.assert_allclose(got, expected, atol=1e-5)
  with_prefix = hidden[0].mean(0)
  assert np.abs(got - with_prefix / np.linalg.norm(with_prefix)).max() > 1e-3
  with pytest.raises(ValueError, match="max_length=8"):
    encoder.encode(["a"], instruction=INSTRUCTION, max_length=8)


def test_save_reload_and_bf16(encoder, export_dir):
  from reasonir_jax import Encoder
  again = Encoder.from_pretrained(export_dir, dtype="float32", show_progress=False)
  a = encoder.encode(TEXTS, max_length=64)
  np.testing.assert_array_equal(again.encode(TEXTS, max_length=64), a)
  bf16 = Encoder.from_pretrained(export_dir, show_progress=False)
  assert bf16.model_cfg.dtype == "bfloat16"
  b = bf16.encode(TEXTS, max_length=64)
  assert b.dtype == np.float32
  assert np.min(np.sum(a * b, axis=-1)) > 0.99  # cosine to the fp32 embeddings


def test_training_workdir_delegates_to_checkpoint_module(encoder, hf_dir, tmp_path, monkeypatch):
  from flax import nnx
  from reasonir_jax import Encoder
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  monkeypatch.setitem(sys.modules, "reasonir_jax.training.checkpoint", None)
  with pytest.raises(RuntimeError, match="load_params_for_export"):
    Encoder.from_pretrained(str(workdir))

  calls = []

  def load_params_for_export(path, step=None):
    calls.append((path, step))
    return nnx.state(encoder.model, nnx.Param), encoder.model_cfg, hf_dir

  fake = types.ModuleType("reasonir_jax.training.checkpoint")
  fake.load_params_for_export = load_params_for_export
  monkeypatch.setitem(sys.modules, "reasonir_jax.training.checkpoint", fake)
  loaded = Encoder.from_pretrained(str(workdir), dtype="float32")
  assert calls == [(str(workdir), None)]
  np.testing.assert_allclose(loaded.encode(TEXTS, max_length=64),
                             encoder.encode(TEXTS, max_length=64), atol=1e-6)
