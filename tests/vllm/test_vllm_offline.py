"""The `vllm` backend (vLLM's offline `LLM`) on real vLLM (CPU build), one engine for the module:
chat and raw completions, structured JSON, the length check before sending, finish_reason=length,
seeds, stop strings, one answer per input in order, and data_gen's vl and negatives on it."""
import json

import pytest

from data_gen.inputs import read_documents, read_training_rows
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams
from tests.vllm.datagen_util import (N_INPUTS, check_long_input_rejected, check_negatives,
                                     check_vl, crashed_then_resumed, negatives_pipeline,
                                     vl_pipeline, write_docs, write_rows)
from tests.vllm.vllm_util import MAX_MODEL_LEN, engine_kwargs, require_vllm

SCHEMA = {"type": "object",
          "properties": {"label": {"type": "string", "enum": ["relevant", "irrelevant"]},
                         "sure": {"type": "boolean"}},
          "required": ["label", "sure"], "additionalProperties": False}


def _user(text):
  return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
  require_vllm()
  b = make_backend("vllm", model=tiny_llama_dir, **engine_kwargs())
  yield b
  b.close()


def _engine_output(backend, prompt, max_tokens):
  """vLLM's own output for one greedy request (chat for a conversation, generate for a string):
  its token ids and finish reason, which the backend's answers do not carry."""
  params = backend.vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens)
  if isinstance(prompt, str):
    out, = backend.llm.generate([prompt], params, use_tqdm=False)
  else:
    out, = backend.llm.chat([prompt], params, use_tqdm=False)
  return out.outputs[0]


def test_engine_reports_its_max_model_len(backend):
  assert backend.max_model_len == MAX_MODEL_LEN


def test_chat_stops_at_max_tokens_and_says_so(backend):
  # A random model almost never samples EOS: every answer runs to max_tokens, which the backend
  # reports as a "length" failure carrying the text so far, never as an answer.
  convs = [_user("why is the sky blue"), _user("name a prime")]
  out = backend.chat(convs, SamplingParams(max_tokens=6))
  assert len(out) == 2
  for conv, r in zip(convs, out):
    engine = _engine_output(backend, conv, 6)
    assert engine.finish_reason == "length" and len(engine.token_ids) == 6
    assert isinstance(r, ChatFailure) and r.kind == "length", r
    assert "finish_reason=length" in r.reason
    assert r.text == engine.text and r.text


def test_raw_completion_keeps_truncated_text_only_when_asked(backend):
  engine = _engine_output(backend, "The mitochondria is", 5)
  assert engine.finish_reason == "length" and len(engine.token_ids) == 5
  kept, = backend.complete(["The mitochondria is"], SamplingParams(max_tokens=5),
                           keep_truncated=True)
  assert kept == engine.text and kept
  failed, = backend.complete(["The mitochondria is"], SamplingParams(max_tokens=5))
  assert isinstance(failed, ChatFailure) and failed.kind == "length"
  assert failed.text == kept


def test_raw_completion_does_not_apply_the_chat_template(backend):
  # The chat path wraps the text in the template; the raw path sends the string as it is: each
  # matches vLLM's own generate() of its prompt (the template applied, or not).
  sp = SamplingParams(max_tokens=8)
  raw, = backend.complete(["name a prime"], sp, keep_truncated=True)
  chat, = backend.chat([[{"role": "user", "content": "name a prime"}]], sp)
  chat = chat.text if isinstance(chat, ChatFailure) else chat
  templated = backend.llm.get_tokenizer().apply_chat_template(
      [{"role": "user", "content": "name a prime"}], tokenize=False, add_generation_prompt=True)
  assert templated.startswith("<|begin_of_text|><|user|>")
  assert raw == _engine_output(backend, "name a prime", 8).text
  assert chat == _engine_output(backend, templated, 8).text
  assert chat != raw


def test_structured_output_is_schema_valid_json(backend):
  out = backend.chat([_user(f"is passage {i} relevant?") for i in range(4)],
                     SamplingParams(max_tokens=40), json_schema=SCHEMA)
  for r in out:
    assert isinstance(r, str), r  # the grammar ends the answer: no "length" failure
    obj = json.loads(r)
    assert set(obj) == {"label", "sure"}
    assert obj["label"] in ("relevant", "irrelevant") and isinstance(obj["sure"], bool)


def test_prompt_over_max_model_len_is_rejected_without_being_sent(backend, monkeypatch):
  sent = []
  generate = backend._generate

  def spy(conversations, params, **kw):
    sent.extend(conversations)
    return generate(conversations, params, **kw)

  monkeypatch.setattr(backend, "_generate", spy)
  long = _user("word " * (MAX_MODEL_LEN + 50))  # a token a word: over max_model_len on its own
  edge = _user("word " * (MAX_MODEL_LEN - 150))  # fits, but not with max_tokens=200
  short = _user("hi")
  out = backend.chat([long, short, edge], SamplingParams(max_tokens=200))
  assert [getattr(r, "kind", None) for r in out] == ["prompt_too_long", "length",
                                                      "prompt_too_long"]
  assert f"max_model_len={MAX_MODEL_LEN}" in out[0].reason
  assert sent == [short]
  # The raw path checks the string as generate() tokenizes it.
  raw = backend.complete(["word " * (MAX_MODEL_LEN + 50)], SamplingParams(max_tokens=8))
  assert raw[0].kind == "prompt_too_long" and sent == [short]


def test_sampling_is_reproducible_under_a_seed(backend):
  convs = [_user(f"question {i}") for i in range(3)]
  def run(seed):
    out = backend.chat(convs, SamplingParams(temperature=1.0, max_tokens=12, seed=seed))
    return [r.text for r in out]
  first = run(7)
  assert run(7) == first
  assert run(8) != first


def test_stop_strings_end_the_answer_before_the_stop_string(backend):
  sp = SamplingParams(max_tokens=24)
  full, = backend.complete(["Photosynthesis converts"], sp, keep_truncated=True)
  # A stop string from inside the greedy answer: the answer must end right before its first
  # occurrence (vLLM leaves the stop string out, as OpenAI does).
  i = next(i for i in range(2, len(full) - 2) if full[i:i + 2].isalnum())
  stop = full[i:i + 2]
  cut, = backend.complete(["Photosynthesis converts"], SamplingParams(max_tokens=24, stop=(stop,)))
  assert cut == full[:full.index(stop)]


def test_every_input_is_answered_once_in_order(backend):
  too_long = _user("x " * (MAX_MODEL_LEN + 50))
  convs = [too_long, _user("a"), _user("b"), too_long, _user("c")]
  out = backend.chat(convs, SamplingParams(max_tokens=4), json_schema=None)
  assert len(out) == len(convs)
  assert [r.kind for r in out] == ["prompt_too_long", "length", "length", "prompt_too_long",
                                   "length"]
  # Each answered one matches its own single request (greedy): nothing swapped in the batch.
  for conv, r in zip(convs, out):
    if r.kind == "length":
      alone, = backend.chat([conv], SamplingParams(max_tokens=4))
      assert alone.text == r.text


def test_vl_and_negatives_stopped_mid_run_then_resumed_are_exactly_once(backend, tmp_path):
  # data_gen's two-step pipelines on this module's engine (the command line's SIGKILL, which
  # takes the engine with it, is test_vllm_datagen.py's).
  docs = read_documents(write_docs(tmp_path / "docs.jsonl", N_INPUTS))
  out = str(tmp_path / "vl")
  manifest, rejects = crashed_then_resumed(lambda: vl_pipeline(backend), docs, out)
  check_long_input_rejected(rejects, "vllm")
  check_vl(manifest, rejects)
  rows = read_training_rows(write_rows(tmp_path / "rows.jsonl", N_INPUTS))
  out = str(tmp_path / "negatives")
  manifest, rejects = crashed_then_resumed(lambda: negatives_pipeline(backend), rows, out)
  check_long_input_rejected(rejects, "vllm")
  check_negatives(out, manifest, rejects, "vllm")


def test_close_stops_the_engine_process(backend):
  # The module's last test: the engine core is a child process, which close() ends now rather
  # than at interpreter exit.
  import psutil
  # This process's own engine core and its workers (the session's server runs another engine).
  engines = [p for p in psutil.Process().children() if "EngineCore" in p.name()]
  assert engines, "vLLM's engine core should run as a child process"
  engines += [c for p in engines for c in p.children(recursive=True)]
  backend.close()
  _, alive = psutil.wait_procs(engines, timeout=30)
  assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
  backend.close()  # twice is fine
