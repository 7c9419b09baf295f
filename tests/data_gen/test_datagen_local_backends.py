"""The `transformers` backend with a tiny random Llama (plumbing), and the `vllm` backend's request
building against injected fake vLLM modules (no vLLM, no GPU)."""
import dataclasses
import json
import types

import pytest

from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.backends.transformers import plain_chat_format
from reasonir_jax.llm.types import ChatFailure, SamplingParams, cut_at_stop


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tokenizer_dir):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=1024,
                                    bos_token_id=0, eos_token_id=1, pad_token_id=2)
  out = tmp_path_factory.mktemp("tiny_llama")
  transformers.LlamaForCausalLM(config).save_pretrained(out)
  transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
  return str(out)


def _spy_on_generate(backend) -> dict:
  """Records the keyword arguments and the output of the backend's every `generate` call (the
  latest call's win)."""
  seen = {}
  real_generate = backend.lm.generate

  def spy(**kwargs):
    seen.clear()
    seen.update(kwargs)
    seen["out"] = real_generate(**kwargs)
    return seen["out"]

  backend.lm.generate = spy
  return seen


def test_transformers_backend_generates_with_a_tiny_random_llama(tiny_llama_dir):
  backend = make_backend("transformers", model=tiny_llama_dir, device="cpu", batch_size=2)
  assert not backend.tokenizer.chat_template  # exercises the plain fallback format
  convs = [[{"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Photosynthesis converts light energy."}],
           [{"role": "user", "content": "A binary search halves the interval."}],
           [{"role": "user", "content": "x"}]]
  greedy = SamplingParams(temperature=0.0, max_tokens=6, seed=0)
  out = backend.chat(convs, greedy)
  assert len(out) == 3 and all(isinstance(o, str) for o in out)
  assert out == backend.chat(convs, greedy)  # greedy is deterministic
  # Left padding: an answer does not depend on the other conversations of its batch.
  assert backend.chat(convs[1:2], greedy) == out[1:2]
  sampled = backend.chat(convs[:1], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6,
                                                   seed=3))
  assert sampled == backend.chat(convs[:1], SamplingParams(temperature=1.0, top_p=0.9,
                                                           max_tokens=6, seed=3))
  # The sampling parameters reach `generate`, and only the new tokens are decoded.
  seen = _spy_on_generate(backend)
  [text] = backend.chat(convs[1:2], greedy)
  assert seen["max_new_tokens"] == 6 and seen["do_sample"] is False
  prompt_len = seen["input_ids"].shape[1]
  assert 0 < seen["out"].shape[1] - prompt_len <= 6
  assert text == backend.tokenizer.decode(seen["out"][0, prompt_len:], skip_special_tokens=True)
  assert backend.tokenizer.decode(seen["input_ids"][0]).endswith("Assistant:")
  # With a chat template, the template formats the prompt.
  backend.tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                                     "{% endfor %}{% if add_generation_prompt %}[assistant]"
                                     "{% endif %}")
  assert backend.format_prompt(convs[1]) == ("[user]A binary search halves the interval."
                                             "[assistant]")
  assert isinstance(backend.chat(convs[1:2], greedy)[0], str)


def test_transformers_backend_in_a_pipeline_rejects_non_json(tiny_llama_dir, tmp_path):
  from data_gen.pipelines.hq import HQPipeline
  from data_gen.runner import Generation, run_pipeline
  backend = make_backend("transformers", model=tiny_llama_dir, device="cpu")
  gen = Generation(backend, SamplingParams(max_tokens=4), max_attempts=2)
  docs = [{"id": "a", "text": "The mitochondria is the powerhouse of the cell."}]
  manifest = run_pipeline(HQPipeline(gen, queries_per_doc=1), docs, str(tmp_path))
  assert manifest["inputs_rejected"] == 1  # random weights never write valid JSON
  with open(tmp_path / manifest["rejects_file"]) as f:
    [reject] = [json.loads(line) for line in f]
  assert len(reject["attempts"]) == 2 and reject["attempts"][0]["answer"] is not None


def test_transformers_raw_completion_uses_no_template(tiny_llama_dir):
  backend = make_backend("transformers", model=tiny_llama_dir, device="cpu", batch_size=2)
  assert backend.raw_completion
  backend.tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
  prompts = ["Query: a binary search.\nRelevance score:", "x"]
  seen = _spy_on_generate(backend)
  greedy = SamplingParams(temperature=0.0, max_tokens=5)
  [text] = backend.complete(prompts[:1], greedy)
  # The prompt's own tokens (the tokenizer's BOS included), no template and no "Assistant:".
  assert seen["input_ids"][0].tolist() == backend.tokenizer(prompts[0])["input_ids"]
  assert "logits_processor" not in seen  # no penalty asked for
  prompt_len = seen["input_ids"].shape[1]
  assert text == backend.tokenizer.decode(seen["out"][0, prompt_len:], skip_special_tokens=True)
  out = backend.complete(prompts, greedy)
  assert out[0] == text and len(out) == 2  # left padding leaves each answer as it was alone


def test_penalty_processor_counts_generated_tokens_only():
  import torch
  from reasonir_jax.llm.backends.transformers import penalty_processor
  ids = torch.tensor([[5, 5, 7, 9, 9, 9]])  # a 2-token prompt, then 7 once and 9 three times
  scores = torch.zeros(1, 10)
  out = penalty_processor(2, frequency=1.0, presence=0.5)(ids, scores)
  expected = torch.zeros(1, 10)
  expected[0, 7], expected[0, 9] = -1.5, -3.5  # 5 was in the prompt only: not penalised
  assert torch.equal(out, expected)
  assert torch.equal(penalty_processor(6, 1.0, 0.5)(ids, scores), scores)  # nothing generated


def test_transformers_frequency_penalty_reaches_generate(tiny_llama_dir):
  backend = make_backend("transformers", model=tiny_llama_dir, device="cpu")
  seen = _spy_on_generate(backend)
  prompt = ["The mitochondria is the powerhouse of the cell."]

  def generated(penalty):
    backend.complete(prompt, SamplingParams(temperature=0.0, max_tokens=12,
                                            frequency_penalty=penalty))
    assert len(seen["logits_processor"]) == 1
    tokens = seen["out"][0, seen["input_ids"].shape[1]:].tolist()
    return tokens[:tokens.index(1)] if 1 in tokens else tokens  # up to EOS (id 1)

  tokens = generated(1e4)
  assert len(set(tokens)) == len(tokens) > 1  # a huge penalty: no generated token repeats
  tokens = generated(-1e4)
  assert tokens == [tokens[0]] * 12  # a huge negative one: the first token, over and over


def test_transformers_stop_string_ends_generation_and_is_cut(tiny_llama_dir):
  backend = make_backend("transformers", model=tiny_llama_dir, device="cpu", batch_size=2)
  seen = _spy_on_generate(backend)
  prompts = ["The mitochondria is the powerhouse of the cell.", "x"]
  greedy = SamplingParams(temperature=0.0, max_tokens=12)
  full = backend.complete(prompts, greedy)
  assert "stopping_criteria" not in seen  # none asked for
  text = full[0]
  stop = text[len(text) // 2:len(text) // 2 + 2]  # a piece of what the model writes anyway
  assert stop.strip() and text.index(stop) < len(text) - len(stop)
  cut = backend.complete(prompts, dataclasses.replace(greedy, stop=(stop,)))
  assert len(seen["stopping_criteria"]) == 1
  # The text before the stop string, as vLLM and OpenAI return it; the other prompt of the batch
  # is cut only where it holds the stop string itself.
  assert cut[0] == text[:text.index(stop)]
  assert cut[1] == cut_at_stop(full[1], [stop])
  # Generation ended early: no 12 new tokens once every sequence has hit the stop string.
  if stop in full[1]:
    assert seen["out"].shape[1] - seen["input_ids"].shape[1] < 12
  # The chat path honours it too.
  [chat_full] = backend.chat([[{"role": "user", "content": "hello"}]], greedy)
  piece = chat_full[len(chat_full) // 2:len(chat_full) // 2 + 2]
  if piece.strip():
    [chat_cut] = backend.chat([[{"role": "user", "content": "hello"}]],
                              dataclasses.replace(greedy, stop=(piece,)))
    assert chat_cut == chat_full[:chat_full.index(piece)]


def test_sampling_stop_is_left_out_of_to_dict_when_empty():
  assert "stop" not in SamplingParams().to_dict()  # earlier cache keys and run settings hold
  assert SamplingParams(stop=["Question:"]).stop == ("Question:",)
  assert SamplingParams(stop="Question:").to_dict()["stop"] == ["Question:"]
  with pytest.raises(ValueError, match="stop strings"):
    SamplingParams(stop=[""])
  assert cut_at_stop("a Question: b Answer:", ["Answer:", "Question:"]) == "a "
  assert cut_at_stop("nothing", ["Question:"]) == "nothing"


def test_plain_chat_format():
  text = plain_chat_format([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
  assert text == "System: S\n\nUser: U\n\nAssistant:"


# --- vLLM with fake modules -----------------------------------------------------------------
class _Params:
  def __init__(self, **kwargs):
    self.kwargs = kwargs


class _WordTokenizer:
  """One token per whitespace-separated word of every message, plus 4 template tokens."""

  def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
    assert tokenize and add_generation_prompt
    return list(range(4 + sum(len(m["content"].split()) for m in messages)))

  def encode(self, text):  # a raw prompt: one BOS, no template
    return list(range(1 + len(text.split())))


def _fake_vllm(kind: str, fail_on: str | None = None, engine_max_len: int = 100):
  calls = {"llm_init": None, "chat": [], "generate": []}

  class LLM:
    def __init__(self, **kwargs):
      calls["llm_init"] = kwargs
      self.llm_engine = types.SimpleNamespace(
          model_config=types.SimpleNamespace(max_model_len=engine_max_len))

    def get_tokenizer(self):
      return _WordTokenizer()

    def chat(self, messages, sampling_params, use_tqdm=True):
      calls["chat"].append((messages, sampling_params))
      if fail_on and any(fail_on in m[-1]["content"] for m in messages):
        raise ValueError("vLLM refused the request")
      stop = sampling_params.kwargs.get("stop") or []  # vLLM ends the text before a stop string
      return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
          text=cut_at_stop(f"answer to {m[-1]['content']}", stop),
          finish_reason="length" if "ramble" in m[-1]["content"] else "stop")])
          for m in messages]

    def generate(self, prompts, sampling_params, use_tqdm=True):
      calls["generate"].append((prompts, sampling_params))
      stop = sampling_params.kwargs.get("stop") or []
      return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
          text=cut_at_stop(f"continues {p}", stop),
          finish_reason="length" if "ramble" in p else "stop")]) for p in prompts]

  sp = types.SimpleNamespace()
  if kind == "new":
    sp.StructuredOutputsParams = type("StructuredOutputsParams", (_Params,), {})
  elif kind == "old":
    sp.GuidedDecodingParams = type("GuidedDecodingParams", (_Params,), {})
  module = types.SimpleNamespace(LLM=LLM, SamplingParams=_Params, sampling_params=sp)
  return module, calls


@pytest.mark.parametrize("kind,field,cls", [("new", "structured_outputs",
                                             "StructuredOutputsParams"),
                                            ("old", "guided_decoding", "GuidedDecodingParams"),
                                            ("none", None, None)])
def test_vllm_request_building(kind, field, cls):
  module, calls = _fake_vllm(kind)
  backend = make_backend("vllm", model="llama-70b", tensor_parallel_size=8, max_model_len=8192,
                         seed=1, vllm_module=module)
  assert calls["llm_init"] == {"model": "llama-70b", "tensor_parallel_size": 8, "dtype": "auto",
                               "gpu_memory_utilization": 0.9, "seed": 1, "max_model_len": 8192}
  convs = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
  schema = {"type": "object", "properties": {"query": {"type": "string"}}}
  out = backend.chat(convs, SamplingParams(temperature=0.0, top_p=0.95, max_tokens=1536, seed=4),
                     json_schema=schema)
  assert out == ["answer to a", "answer to b"]
  [(messages, params)] = calls["chat"]
  assert messages == convs  # all conversations in one llm.chat call
  base = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 1536, "seed": 4}
  assert {k: v for k, v in params.kwargs.items() if k in base} == base
  if field is None:
    assert set(params.kwargs) == set(base)
  else:
    assert type(params.kwargs[field]).__name__ == cls
    assert params.kwargs[field].kwargs == {"json": schema}
  # Without a schema, no structured-output parameter is sent.
  backend.chat(convs[:1], SamplingParams())
  assert set(calls["chat"][-1][1].kwargs) == set(base)


def test_vllm_overlong_prompt_rejected_before_sending_and_length_is_its_own_kind():
  module, calls = _fake_vllm("new", engine_max_len=30)  # max_model_len from the engine config
  backend = make_backend("vllm", model="m", vllm_module=module)
  long_text = " ".join(["word"] * 20)
  convs = [[{"role": "user", "content": c}] for c in ("a", long_text, "ramble on", "c")]
  out = backend.chat(convs, SamplingParams(max_tokens=10))
  assert out[0] == "answer to a" and out[3] == "answer to c"
  # 4 + 20 prompt tokens + 10 new tokens > 30: never sent, counted as its own kind.
  assert isinstance(out[1], ChatFailure) and out[1].kind == "prompt_too_long"
  assert "24 tokens" in out[1].reason and "max_model_len=30" in out[1].reason
  assert isinstance(out[2], ChatFailure) and out[2].kind == "length" and out[2].text == "answer to ramble on"
  [(messages, _)] = calls["chat"]  # one call for the rest of the batch
  assert len(messages) == 3


def test_vllm_call_failure_is_bisected_not_rerun_one_by_one():
  module, calls = _fake_vllm("new", fail_on="bad")
  backend = make_backend("vllm", model="m", vllm_module=module, max_model_len=1000)
  convs = [[{"role": "user", "content": f"q{i}"}] for i in range(256)]
  convs[100] = [{"role": "user", "content": "bad"}]
  out = backend.chat(convs, SamplingParams(max_tokens=10))
  assert isinstance(out[100], ChatFailure) and out[100].kind == "backend"
  assert out[:100] == [f"answer to q{i}" for i in range(100)]
  assert len(calls["chat"]) <= 2 * 9 + 1  # O(log n) calls, not 257


def test_vllm_raw_prompts_go_to_generate_with_the_same_checks():
  module, calls = _fake_vllm("new", engine_max_len=30)
  backend = make_backend("vllm", model="m", vllm_module=module)
  assert backend.raw_completion
  long_text = " ".join(["word"] * 20)
  prompts = ["Query: q\nRelevance score:", long_text, "ramble on"]
  sampling = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=10, seed=42,
                            frequency_penalty=1.0)
  out = backend.complete(prompts, sampling)
  assert out[0] == "continues Query: q\nRelevance score:"
  # 1 BOS + 20 words + 10 new tokens > 30, counted on the raw string (no 4 template tokens).
  assert isinstance(out[1], ChatFailure) and out[1].kind == "prompt_too_long"
  assert "21 tokens" in out[1].reason
  assert isinstance(out[2], ChatFailure) and out[2].kind == "length"
  assert calls["chat"] == []  # never through llm.chat (the chat template)
  [(sent, params)] = calls["generate"]
  assert sent == [prompts[0], prompts[2]]  # the exact strings, in one call
  assert params.kwargs == {"temperature": 0.6, "top_p": 0.9, "max_tokens": 10, "seed": 42,
                           "frequency_penalty": 1.0}
  kept = backend.complete(["ramble on"], SamplingParams(max_tokens=10), keep_truncated=True)
  assert kept == ["continues ramble on"]
  # 20 words fit once the budget is small: the check uses the raw token count.
  assert backend.complete([long_text], SamplingParams(max_tokens=9)) == [f"continues {long_text}"]


@pytest.mark.parametrize("raw", [False, True])
def test_vllm_stop_strings_reach_sampling_params_and_cut_the_answer(raw):
  module, calls = _fake_vllm("new")
  backend = make_backend("vllm", model="m", vllm_module=module, max_model_len=1000)
  sampling = SamplingParams(max_tokens=10, stop=("Question:",))
  if raw:
    out = backend.complete(["so Question: next"], sampling)
    params = calls["generate"][-1][1]
    assert out == ["continues so "]
  else:
    out = backend.chat([[{"role": "user", "content": "so Question: next"}]], sampling)
    params = calls["chat"][-1][1]
    assert out == ["answer to so "]
  assert params.kwargs["stop"] == ["Question:"]
  backend.chat([[{"role": "user", "content": "a"}]], SamplingParams(max_tokens=10))
  assert "stop" not in calls["chat"][-1][1].kwargs  # none asked for, none sent


def test_vllm_length_failure_carries_the_text_so_far():
  module, _ = _fake_vllm("new")
  backend = make_backend("vllm", model="m", vllm_module=module, max_model_len=1000)
  [cut] = backend.chat([[{"role": "user", "content": "ramble on"}]], SamplingParams(max_tokens=10))
  assert cut.kind == "length" and cut.text == "answer to ramble on"


def test_vllm_missing_gives_install_hint():
  import importlib.util
  if importlib.util.find_spec("vllm") is not None:
    pytest.skip("vllm is installed here")
  with pytest.raises(ImportError, match=r"pip install 'reasonir-jax\[datagen\]'"):
    make_backend("vllm", model="m")
