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


# The real Llama-3 tokenizer, rebuilt from Meta's `llama-models` wheel (its tiktoken ranks file)
# with Llama-3.1's special tokens at its ids, its split pattern and its BOS post-processor.
LLAMA_MODELS = "llama-models==0.3.0"
LLAMA3_RANKS = "llama_models/llama3/tokenizer.model"
LLAMA3_SPECIAL_TOKENS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])  # ids 128000 .. 128255


def _llama3_ranks_bytes() -> bytes:
  """tokenizer.model from the installed llama-models package, else from its wheel downloaded
  once (no dependencies) into ~/.cache/reasonir_jax; skips the test when neither works."""
  import importlib.resources
  import subprocess
  import sys
  import zipfile
  try:
    return (importlib.resources.files("llama_models") / "llama3" / "tokenizer.model").read_bytes()
  except (ModuleNotFoundError, FileNotFoundError):
    pass
  cache = os.path.join(os.path.expanduser("~"), ".cache", "reasonir_jax", "llama_models_wheel")
  wheels = [f for f in os.listdir(cache) if f.endswith(".whl")] if os.path.isdir(cache) else []
  if not wheels:
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache,
                          LLAMA_MODELS], capture_output=True, text=True)
    wheels = [f for f in os.listdir(cache) if f.endswith(".whl")] if os.path.isdir(cache) else []
    if not wheels:
      pytest.skip(f"the Llama-3 tokenizer needs {LLAMA_MODELS}: not installed (pip install "
                  f"-e '.[test]') and `pip download` failed: {run.stderr.strip()[-300:]}")
  with zipfile.ZipFile(os.path.join(cache, sorted(wheels)[-1])) as wheel:
    return wheel.read(LLAMA3_RANKS)


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory):
  """The real Llama-3(.1) tokenizer (128256 ids, adds BOS itself, no pad token), in HF format."""
  import base64
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import TikTokenConverter

  class Converter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path):  # "<base64 token> <rank>" lines; no tiktoken needed
      with open(path, "rb") as f:
        return {base64.b64decode(tok): int(rank)
                for tok, rank in (line.split() for line in f if line.strip())}

  out = tmp_path_factory.mktemp("llama3_tokenizer")
  ranks = out / "tokenizer.model"
  ranks.write_bytes(_llama3_ranks_bytes())
  # The default split pattern of TikTokenConverter is Llama-3's (pinned by a test).
  backend = Converter(vocab_file=str(ranks), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
  bos = LLAMA3_SPECIAL_TOKENS[0]
  backend.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                    special_tokens=[(bos, 128000)])])
  ranks.unlink()
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos,
                                eos_token=LLAMA3_SPECIAL_TOKENS[1], model_max_length=131072)
  tok.save_pretrained(str(out))
  return str(out)
