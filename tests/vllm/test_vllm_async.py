"""The `vllm-async` backend (vLLM's async engine in this process) on real vLLM (CPU build), one
engine for the module: a stream of requests answered as they finish, structured JSON, the length
check before sending, finish_reason=length, seeds, stop strings, data_gen's negatives on it, and
`close()` with requests in flight (the module's last test: it shuts the engine down)."""
import json
import time

import pytest

from data_gen.inputs import read_training_rows
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams
from tests.vllm.datagen_util import (N_INPUTS, check_long_input_rejected, check_negatives,
                                     crashed_then_resumed, negatives_pipeline, write_rows)
from tests.vllm.vllm_util import MAX_MODEL_LEN, engine_kwargs, require_vllm

SCHEMA = {"type": "object",
          "properties": {"answer": {"type": "string", "enum": ["yes", "no", "unsure"]}},
          "required": ["answer"], "additionalProperties": False}


def _user(text):
  return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
  require_vllm()
  b = make_backend("vllm-async", model=tiny_llama_dir, **engine_kwargs())
  yield b
  b.close()  # a no-op once the close test has run


def test_stream_answers_every_request_with_its_finish_reason(backend):
  futures = [backend.submit(_user(f"q{i}"), SamplingParams(max_tokens=5)) for i in range(8)]
  futures.append(backend.submit_completion("raw prompt", SamplingParams(max_tokens=5),
                                           keep_truncated=True))
  out = [f.result(timeout=120) for f in futures]
  assert backend.max_model_len == MAX_MODEL_LEN
  for r in out[:-1]:
    assert isinstance(r, ChatFailure) and r.kind == "length" and r.text, r
  assert isinstance(out[-1], str) and out[-1]
  assert backend.meter.completed >= 9 and backend.meter.current == 0


def test_structured_output_is_schema_valid_json(backend):
  out = backend.chat([_user(f"is it {i}?") for i in range(4)], SamplingParams(max_tokens=32),
                     json_schema=SCHEMA)
  for r in out:
    assert isinstance(r, str), r
    assert json.loads(r)["answer"] in ("yes", "no", "unsure")


def test_prompt_over_max_model_len_is_answered_at_once_and_never_sent(backend):
  before = backend.meter.completed
  f = backend.submit(_user("word " * (MAX_MODEL_LEN + 50)), SamplingParams(max_tokens=8))
  assert f.done()  # resolved before anything reached the engine
  assert f.result().kind == "prompt_too_long"
  g = backend.submit_completion("word " * (MAX_MODEL_LEN - 150), SamplingParams(max_tokens=200))
  assert g.done() and g.result().kind == "prompt_too_long"
  assert f"max_model_len={MAX_MODEL_LEN}" in g.result().reason
  assert backend.meter.completed == before


def test_seeded_sampling_is_reproducible(backend):
  def run(seed):
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=seed)
    return [r.text for r in backend.chat([_user("a"), _user("b")], sp)]
  assert run(3) == run(3)
  assert run(3) != run(4)


def test_stop_string_ends_the_answer(backend):
  full = backend.submit_completion("Plate tectonics", SamplingParams(max_tokens=24),
                                   keep_truncated=True).result(timeout=120)
  i = next(i for i in range(2, len(full) - 2) if full[i:i + 2].isalnum())
  stop = full[i:i + 2]
  cut = backend.submit_completion("Plate tectonics",
                                  SamplingParams(max_tokens=24, stop=(stop,))).result(timeout=120)
  assert cut == full[:full.index(stop)]


def test_negatives_stopped_mid_run_then_resumed_is_exactly_once(backend, tmp_path):
  # On this module's engine, two batches in flight (the command line's SIGKILL, which takes the
  # engine with it, is test_vllm_datagen.py's, on vl).
  rows = read_training_rows(write_rows(tmp_path / "rows.jsonl", N_INPUTS))
  out = str(tmp_path / "negatives")
  manifest, rejects = crashed_then_resumed(lambda: negatives_pipeline(backend), rows, out)
  check_long_input_rejected(rejects, "vllm-async")
  check_negatives(out, manifest, rejects, "vllm-async")


def test_close_resolves_requests_in_flight_and_refuses_new_ones(backend):
  # Many long answers (a random model seldom samples EOS), so that some are still running when
  # close() comes: the engine finishes a few hundred tokens in well under a second here.
  sp = SamplingParams(max_tokens=MAX_MODEL_LEN - 32)
  futures = [backend.submit(_user(f"long {i}"), sp) for i in range(64)]
  deadline = time.monotonic() + 30
  while backend.meter.current == 0 and time.monotonic() < deadline:
    time.sleep(0.005)
  start = time.monotonic()
  backend.close()
  assert time.monotonic() - start < 30
  out = [f.result(timeout=1) for f in futures]  # all resolved by close(), none left hanging
  closed = [r for r in out if isinstance(r, ChatFailure) and "closed" in r.reason]
  assert closed, "no request was still in flight at close()"
  assert all(isinstance(r, (str, ChatFailure)) for r in out)
  late = backend.submit(_user("after"), SamplingParams(max_tokens=4)).result(timeout=1)
  assert isinstance(late, ChatFailure) and "closed" in late.reason
