"""The `vllm-async` backend against an injected fake vLLM async engine (no vLLM, no GPU):
continuous submission, length checks before sending, finish reasons, structured output, close."""
import asyncio
import contextlib
import threading
import time
import types

import pytest

from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams, StreamingChatBackend


class _Params:
  def __init__(self, **kwargs):
    self.kwargs = kwargs


class _WordTokenizer:
  """One id per word of every message (a shared vocabulary), after 4 template tokens (id 0), so
  the fake engine can read the prompt back."""

  def __init__(self, vocab: list):
    self.vocab = vocab

  def encode(self, text):
    ids = []
    for w in text.split():
      if w not in self.vocab:
        self.vocab.append(w)
      ids.append(self.vocab.index(w) + 1)
    return ids

  def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
    assert tokenize and add_generation_prompt
    return [0, 0, 0, 0] + [i for m in messages for i in self.encode(m["content"])]


def _fake_vllm(engine_max_len=100, async_getters=False, old_structured=False):
  """A fake vLLM module: requests whose prompt holds "slow" wait until `release` is set, "boom"
  raises, "ramble" stops at the token limit; with state["gather"] = n every request first waits
  until n requests have been in the engine at once."""
  vocab: list = []
  state = {"requests": [], "done": [], "cancelled": [], "in_flight": 0, "peak": 0,
           "args": None, "shutdown": 0, "release": threading.Event(), "loop_thread": None,
           "gather": 0}

  class AsyncEngineArgs:
    def __init__(self, **kwargs):
      state["args"] = kwargs

  class AsyncLLMEngine:
    model_config = types.SimpleNamespace(max_model_len=engine_max_len)

    @classmethod
    def from_engine_args(cls, args):
      state["loop_thread"] = threading.current_thread().name
      asyncio.get_running_loop()  # built on the backend's loop
      return cls()

    def get_tokenizer(self):
      tok = _WordTokenizer(vocab)
      if async_getters:
        async def coro():
          return tok
        return coro()
      return tok

    async def generate(self, prompt, params, request_id):
      words = [vocab[i - 1] for i in prompt["prompt_token_ids"] if i]
      state["requests"].append((request_id, words, params))
      state["in_flight"] += 1
      state["peak"] = max(state["peak"], state["in_flight"])
      try:
        while state["peak"] < state["gather"]:  # else a fast answer may beat the next submit
          await asyncio.sleep(0.005)
        while "slow" in words and not state["release"].is_set():
          await asyncio.sleep(0.005)
        if "boom" in words:
          raise RuntimeError("engine step failed")
        text = f"answer to {' '.join(words)}"
        for stop in params.kwargs.get("stop") or []:  # vLLM ends the text before a stop string
          text = text.split(stop, 1)[0]
        reason = "length" if "ramble" in words else "stop"
        for end in (len(text) // 2, len(text)):  # cumulative outputs, the last one finished
          await asyncio.sleep(0)
          yield types.SimpleNamespace(finished=end == len(text), outputs=[
              types.SimpleNamespace(text=text[:end],
                                    finish_reason=reason if end == len(text) else None)])
        state["done"].append(" ".join(words))
      except asyncio.CancelledError:
        state["cancelled"].append(" ".join(words))
        raise
      finally:
        state["in_flight"] -= 1

    def shutdown(self):
      state["shutdown"] += 1

  sp = types.SimpleNamespace()
  name = "GuidedDecodingParams" if old_structured else "StructuredOutputsParams"
  setattr(sp, name, type(name, (_Params,), {}))
  if not old_structured:  # recent vLLM: the engine can send only each request's final output
    sp.RequestOutputKind = types.SimpleNamespace(CUMULATIVE=0, FINAL_ONLY=2)
  module = types.SimpleNamespace(AsyncLLMEngine=AsyncLLMEngine, AsyncEngineArgs=AsyncEngineArgs,
                                 SamplingParams=_Params, sampling_params=sp)
  return module, state


def _async_backend(module, model="m", **kwargs):
  """A `vllm-async` backend on the fake module, closed when the `with` block ends."""
  return contextlib.closing(make_backend("vllm-async", model=model, vllm_module=module, **kwargs))


def _user(text):
  return [{"role": "user", "content": text}]


@pytest.mark.parametrize("async_getters", [False, True])
def test_engine_built_on_the_loop_thread_with_the_flags(async_getters):
  module, state = _fake_vllm(engine_max_len=64, async_getters=async_getters)
  with _async_backend(module, model="llama-70b", tensor_parallel_size=8, seed=3) as backend:
    assert isinstance(backend, StreamingChatBackend)
    assert state["args"] == {"model": "llama-70b", "tensor_parallel_size": 8, "dtype": "auto",
                             "gpu_memory_utilization": 0.9, "seed": 3}
    assert state["loop_thread"] == "vllm-async-loop"
    assert backend.max_model_len == 64  # from the engine's model config
    assert backend.chat([_user("a b"), _user("c")], SamplingParams(max_tokens=8)) == [
        "answer to a b", "answer to c"]


def test_a_slow_request_does_not_hold_back_the_others():
  module, state = _fake_vllm()
  state["gather"] = 7  # nothing answers before all seven are in: a serial backend times out
  with _async_backend(module) as backend:
    sampling = SamplingParams(max_tokens=8)
    slow = backend.submit(_user("slow one"), sampling)
    fast = [backend.submit(_user(f"fast {i}"), sampling) for i in range(6)]
    # Every fast request finishes while the slow one, submitted first, is still running.
    assert [f.result(timeout=10) for f in fast] == [f"answer to fast {i}" for i in range(6)]
    assert not slow.done()
    assert state["peak"] == 7  # all seven were in the engine at once
    assert backend.meter.summary()["peak_in_flight"] == 7
    state["release"].set()
    assert slow.result(timeout=10) == "answer to slow one"
    assert state["done"][-1] == "slow one"
    assert len({rid for rid, _, _ in state["requests"]}) == 7  # one request id each


def test_too_long_prompt_never_sent_and_finish_reasons_mapped():
  module, state = _fake_vllm(engine_max_len=30)
  with _async_backend(module) as backend:
    long_text = " ".join(f"w{i}" for i in range(20))
    out = backend.chat([_user("a"), _user(long_text), _user("ramble on"), _user("boom"),
                        _user("c")], SamplingParams(max_tokens=10))
    assert out[0] == "answer to a" and out[4] == "answer to c"
    # 4 + 20 prompt tokens + 10 new tokens > 30: rejected before sending.
    assert isinstance(out[1], ChatFailure) and out[1].kind == "prompt_too_long"
    assert "24 tokens" in out[1].reason and "max_model_len=30" in out[1].reason
    assert isinstance(out[2], ChatFailure) and out[2].kind == "length"
    assert "max_tokens=10" in out[2].reason
    assert isinstance(out[3], ChatFailure) and out[3].kind == "backend"
    assert "engine step failed" in out[3].reason  # an engine error is a result, not raised
    sent = [" ".join(words) for _, words, _ in state["requests"]]
    assert sorted(sent) == ["a", "boom", "c", "ramble on"]  # the long prompt was never sent
    # An explicit max_model_len wins over the engine's.
    with _async_backend(module, max_model_len=1000) as wide:
      assert wide.chat([_user(long_text)], SamplingParams(max_tokens=10)) == [
          f"answer to {long_text}"]


@pytest.mark.parametrize("old", [False, True])
def test_sampling_and_structured_output_as_the_offline_backend(old):
  module, state = _fake_vllm(old_structured=old)
  with _async_backend(module) as backend:
    schema = {"type": "object", "properties": {"query": {"type": "string"}}}
    backend.submit(_user("a"), SamplingParams(temperature=0.7, top_p=0.9, max_tokens=5, seed=4),
                   json_schema=schema).result(timeout=10)
    backend.submit(_user("b"), SamplingParams(max_tokens=5)).result(timeout=10)
    params = {words[0]: p.kwargs for _, words, p in state["requests"]}
    field = "guided_decoding" if old else "structured_outputs"
    assert {k: v for k, v in params["a"].items() if k != field} == {
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 4}
    assert params["a"][field].kwargs == {"json": schema}
    assert field not in params["b"]  # no schema, no structured output
    outputs_kind = [getattr(p, "output_kind", None) for _, _, p in state["requests"]]
    assert outputs_kind == ([None, None] if old else [2, 2])
  with _async_backend(module, structured_output=False) as plain:
    plain.submit(_user("c"), SamplingParams(), json_schema={"type": "object"}).result(timeout=10)
    assert "structured_outputs" not in state["requests"][-1][2].kwargs
    assert "guided_decoding" not in state["requests"][-1][2].kwargs


def test_stop_strings_reach_the_engine_and_cut_the_answer():
  module, state = _fake_vllm()
  with _async_backend(module) as backend:
    sampling = SamplingParams(max_tokens=5, stop=("Question:",))
    chat = backend.submit(_user("so Question: next"), sampling).result(timeout=10)
    raw = backend.submit_completion("then Question: more", sampling).result(timeout=10)
    plain = backend.submit(_user("b"), SamplingParams(max_tokens=5)).result(timeout=10)
  assert (chat, raw, plain) == ("answer to so ", "answer to then ", "answer to b")
  stops = [p.kwargs.get("stop") for _, _, p in state["requests"]]
  assert stops == [["Question:"], ["Question:"], None]


def test_raw_completion_skips_the_chat_template():
  module, state = _fake_vllm(engine_max_len=30)
  with _async_backend(module) as backend:
    assert backend.raw_completion
    long_prompt = " ".join(f"w{i}" for i in range(25))
    out = backend.complete(["hello there", "ramble on", long_prompt], SamplingParams(max_tokens=5))
    assert out[0] == "answer to hello there"
    assert isinstance(out[1], ChatFailure) and out[1].kind == "length"
    # 25 tokens (no template tokens) + 5 fits 30; 6 more new tokens do not.
    assert out[2] == f"answer to {long_prompt}"
    [too_long] = backend.complete([long_prompt], SamplingParams(max_tokens=6))
    assert isinstance(too_long, ChatFailure) and too_long.kind == "prompt_too_long"
    assert "25 tokens" in too_long.reason
    # keep_truncated: a cut-off answer comes back as its text.
    kept = backend.submit_completion("ramble on", SamplingParams(max_tokens=5),
                                     keep_truncated=True).result(timeout=10)
    assert kept == "answer to ramble on"
    assert len(state["requests"]) == 4  # the too-long prompt was never sent


def test_close_resolves_in_flight_requests_and_stops_the_loop():
  module, state = _fake_vllm()
  backend = make_backend("vllm-async", model="m", vllm_module=module)
  stuck = backend.submit(_user("slow forever"), SamplingParams(max_tokens=8))
  deadline = time.time() + 10
  while not state["requests"] and time.time() < deadline:
    time.sleep(0.005)
  assert state["in_flight"] == 1
  backend.close()
  result = stuck.result(timeout=1)  # resolved, not left hanging
  assert isinstance(result, ChatFailure) and "closed" in result.reason
  assert state["cancelled"] == ["slow forever"]  # the engine request was cancelled (aborted)
  assert state["shutdown"] == 1 and state["in_flight"] == 0
  assert not backend._thread.is_alive() and backend._loop.is_closed()
  after = backend.submit(_user("late"), SamplingParams(max_tokens=8)).result(timeout=1)
  assert isinstance(after, ChatFailure) and "closed" in after.reason
  backend.close()  # idempotent
  assert state["shutdown"] == 1


def test_pipeline_retries_go_into_the_stream(tmp_path):
  """The hq pipeline on the async backend: an invalid first answer is retried (a new prompt
  with the feedback turn) and the rows come out as with any streaming backend."""
  import json
  from data_gen.pipelines.hq import HQPipeline
  from data_gen.runner import Generation, run_pipeline
  module, state = _fake_vllm(engine_max_len=4096)
  query = "How should an engineer reason about this failure mode in practice?"
  seen = set()  # documents answered once (with invalid JSON)

  async def generate(self, prompt, params, request_id):
    words = [state_vocab[i - 1] for i in prompt["prompt_token_ids"] if i]
    state["requests"].append((request_id, words, params))
    doc = next(w for w in words if w.startswith("doc-"))
    retry = doc in seen
    seen.add(doc)
    text = json.dumps({"hard_query": [query]}) if retry else "not json"
    yield types.SimpleNamespace(finished=True, outputs=[
        types.SimpleNamespace(text=text, finish_reason="stop")])

  engine_cls = module.AsyncLLMEngine
  engine_cls.generate = generate
  with _async_backend(module) as backend:
    state_vocab = backend.tokenizer.vocab
    gen = Generation(backend, SamplingParams(max_tokens=256), max_attempts=2)
    docs = [{"id": f"d{i}", "text": f"seed document doc-{i} about caching"} for i in range(3)]
    manifest = run_pipeline(HQPipeline(gen, queries_per_doc=1, min_query_words=5), docs,
                            str(tmp_path), batch_size=2)
  assert manifest["inputs_accepted"] == 3 and manifest["rows"] == 3
  assert len(state["requests"]) == 6  # each input: one invalid answer, one retry
  assert manifest["steps"]["queries"]["retried"] == 3


def test_cli_flags_select_the_async_backend():
  import argparse
  from data_gen.cli import build_parser
  from reasonir_jax.llm import flags as llm
  args = build_parser().parse_args(
      ["hq", "--input", "x", "--output-dir", "y", "--backend", "vllm-async", "--backend-model",
       "big", "--tensor-parallel-size", "4", "--max-model-len", "8192",
       "--no-structured-output", "--max-concurrency", "9"])
  assert llm.backend_kwargs(args) == {"kind": "vllm-async", "model": "big",
                                      "tensor_parallel_size": 4, "max_model_len": 8192,
                                      "structured_output": False}  # openai-only flag dropped
  parser = argparse.ArgumentParser()
  llm.add_backend_flags(parser, prefix="rerank")
  assert llm.backend_kwargs(parser.parse_args(
      ["--rerank-backend", "vllm-async", "--rerank-backend-model", "r"]), "rerank") == {
          "kind": "vllm-async", "model": "r"}
