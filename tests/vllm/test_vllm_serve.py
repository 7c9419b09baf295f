"""vLLM's OpenAI-compatible server (what `vllm serve` runs; real vLLM, CPU build; the session's
`vllm_server`) started as a child process, waited for until /v1/models answers, and used as the
OpenAI-compatible endpoint of the `openai` backend: chat, raw completions (/v1/completions),
structured JSON, and a clean shutdown."""
import json

import pytest

from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


@pytest.fixture(scope="module")
def backend(vllm_server):
  b = make_backend("openai", base_url=vllm_server.base_url, model=vllm_server.served_name,
                   max_concurrency=4)
  yield b
  b.close()


def test_serves_the_model(backend):
  assert backend.list_models() == ["tiny"]


def test_chat_and_raw_completions(backend):
  convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
  out = backend.chat(convs, SamplingParams(max_tokens=6))
  assert len(out) == 3
  for r in out:  # a random model: almost always cut at max_tokens, rarely an early EOS
    assert isinstance(r, str) or (r.kind == "length" and r.text), r
  raw = backend.complete(["The mitochondria is"] * 2, SamplingParams(max_tokens=5),
                         keep_truncated=True)
  assert isinstance(raw[0], str) and raw[0] == raw[1]  # greedy: the same continuation
  cut, = backend.complete(["The mitochondria is"], SamplingParams(max_tokens=5))
  assert isinstance(cut, ChatFailure) and cut.kind == "length" and cut.text == raw[0]


def test_structured_output_is_schema_valid_json(backend):
  out = backend.chat([[{"role": "user", "content": f"ok {i}?"}] for i in range(3)],
                     SamplingParams(max_tokens=24), json_schema=SCHEMA)
  for r in out:
    assert isinstance(r, str), r
    assert json.loads(r)["answer"] in ("yes", "no")


def test_seeded_sampling_is_reproducible(backend):
  def run(seed):
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=seed)
    return [r.text for r in backend.chat([[{"role": "user", "content": "a"}]] * 2, sp)]
  assert run(5) == run(5)


def test_shutdown_is_clean(vllm_server):
  # The session's last test (tests/vllm/conftest.py puts it there): SIGTERM ends the server (and
  # its engine) within the grace period.
  assert vllm_server.stop() == 0
