"""Shared test set-up: a fake 8-device CPU mesh and small artefacts the tests build themselves."""
import os

# Must be set before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

TOKENIZER_CORPUS = [
    "<|user|>\nGiven a biology post, retrieve relevant passages that help answer the post\n<|embed|>\n",
    "<|embed|>\nThe mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "A binary search halves the interval each step, so it runs in logarithmic time.",
    "The derivative of x squared is two x; integrals accumulate area under a curve.",
    "Interest rates rise when central banks tighten monetary policy to curb inflation.",
    "Plate tectonics explains earthquakes, volcanoes and the drift of continents over time.",
    "Unicode: café, naïve, 東京, Ελληνικά, emoji 🙂 and math ∑ ∫ √ should all round-trip.",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  """A small byte-level BPE tokenizer with Llama-3's BOS/EOS/PAD names, saved in HF format."""
  from reasonir_jax.tokenization import train_tokenizer
  out = tmp_path_factory.mktemp("tokenizer")
  train_tokenizer(TOKENIZER_CORPUS * 20, vocab_size=512, out_dir=str(out))
  return str(out)
