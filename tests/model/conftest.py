"""Tiny HF Llama checkpoints built in the test itself (no downloads)."""
import pytest

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=2)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def make_hf_model(seed=0, rope=None, **changes):
  """A random transformers LlamaModel (fp32) with a tiny config, made bidirectional."""
  import torch
  import transformers
  from reasonir_jax.hf.torch_reference import make_bidirectional
  torch.manual_seed(seed)
  kw = dict(TINY, **changes)
  rope = ROPES.get(rope, rope) if isinstance(rope, str) else rope
  kw["rope_parameters"] = dict(rope or LLAMA3_ROPE)
  config = transformers.LlamaConfig(**kw)
  model = transformers.LlamaModel(config).eval()
  with torch.no_grad():  # non-trivial norm scales so the norm weights are really tested
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return make_bidirectional(model)


ROPES = {"llama3": LLAMA3_ROPE, "default": {"rope_type": "default", "rope_theta": 10000.0}}


@pytest.fixture(scope="session")
def hf_model_factory():
  """`make_hf_model(seed, rope=..., **config_changes)` (a fixture: test files cannot import
  conftest under --import-mode=importlib)."""
  return make_hf_model


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, tokenizer_dir):
  """A saved tiny LlamaModel (GQA 4/2, llama3 rope) with the test tokenizer."""
  from reasonir_jax.tokenization import load_tokenizer
  out = str(tmp_path_factory.mktemp("hf_tiny"))
  make_hf_model(seed=0).save_pretrained(out)
  load_tokenizer(tokenizer_dir).save_pretrained(out)
  return out


QWEN3_VOCAB = 2056  # the shipped tokenizer's 2048 ids, `<|endoftext|>`, spare rows


def make_qwen3_model(seed=0, tie_word_embeddings=False, **changes):
  """A random transformers Qwen3ForCausalLM (fp32) with a tiny config: its `.model` is the
  Qwen3Model (causal, as transformers builds it); q/k norm scales are non-trivial."""
  import torch
  import transformers
  torch.manual_seed(seed)
  kw = dict(TINY, vocab_size=QWEN3_VOCAB, rms_norm_eps=1e-6, bos_token_id=None,
            eos_token_id=2048, pad_token_id=2048, tie_word_embeddings=tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
  kw.update(changes)
  model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def make_qwen3_dir(path, seed=0, tokenizer_dir=None, **changes):
  """(model, path): `make_qwen3_model(seed, **changes)` saved at `path`, with a tokenizer."""
  model = make_qwen3_model(seed, **changes)
  model.save_pretrained(path)
  if tokenizer_dir:
    from reasonir_jax.tokenization import load_tokenizer
    load_tokenizer(tokenizer_dir).save_pretrained(path)
  return model, path


@pytest.fixture(scope="session")
def qwen3_dir_factory():
  """`make_qwen3_dir(path, seed, tokenizer_dir=None, **config_changes)` -> (model, path)."""
  return make_qwen3_dir


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
  """A Qwen-like tokenizer: the shipped one without BOS, plus `<|endoftext|>` (id 2048), which
  is also its pad token, as in Qwen's tokenizers."""
  from reasonir_jax.data.sample import sample_tokenizer_dir
  from reasonir_jax.tokenization import load_tokenizer
  tok = load_tokenizer(sample_tokenizer_dir())
  tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
  tok.bos_token = None
  tok.pad_token = "<|endoftext|>"
  out = str(tmp_path_factory.mktemp("qwen_tokenizer"))
  tok.save_pretrained(out)
  loaded = load_tokenizer(out)
  assert loaded.bos_token_id is None and loaded.convert_tokens_to_ids("<|endoftext|>") == 2048
  assert loaded("a b")["input_ids"] == loaded("a b", add_special_tokens=False)["input_ids"]
  return out
