"""The scripted loopback server and the `openai` backend: answers, retries, timeouts, failures."""
import json

import requests

from data_gen.backends import SamplingParams, make_backend
from data_gen.backends.base import ChatFailure
from data_gen.testing import ScriptedChatServer, last_user_message, sequence_responder


def _conv(text):
  return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_server_answers_and_records_requests():
  with ScriptedChatServer(lambda req: "echo:" + last_user_message(req), model="m0") as server:
    assert requests.get(server.base_url + "/models", timeout=5).json()["data"][0]["id"] == "m0"
    backend = make_backend("openai", base_url=server.base_url, model="m0", max_concurrency=4)
    out = backend.chat([_conv(f"q{i}") for i in range(6)],
                       SamplingParams(temperature=0.3, top_p=0.9, max_tokens=77, seed=5),
                       json_schema={"type": "object"})
    backend.close()
  assert out == [f"echo:q{i}" for i in range(6)]  # in order despite concurrency
  assert len(server.requests) == 6
  req = server.requests[0]
  assert (req["model"], req["temperature"], req["top_p"], req["max_tokens"], req["seed"]) == (
      "m0", 0.3, 0.9, 77, 5)
  assert req["response_format"]["type"] == "json_schema"
  assert req["response_format"]["json_schema"]["schema"] == {"type": "object"}
  assert req["messages"][0] == {"role": "system", "content": "be brief"}


def test_retries_5xx_429_and_timeout_then_succeeds():
  answers = [500, 429, ("sleep", 2.0, "too late"), "ok"]
  with ScriptedChatServer(sequence_responder(answers)) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", max_concurrency=1,
                           request_timeout_s=0.3, max_retries=4, backoff_s=0.01)
    out = backend.chat([_conv("x")], SamplingParams())
    assert out == ["ok"]
    assert backend.num_retries == 3
    assert len(server.requests) == 4
    backend.close()


def test_gives_up_with_chat_failure_and_4xx_is_not_retried():
  with ScriptedChatServer(lambda req: 503 if "down" in last_user_message(req) else 400) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", max_retries=2,
                           backoff_s=0.001)
    down, bad = backend.chat([_conv("down"), _conv("bad")], SamplingParams())
    backend.close()
  assert isinstance(down, ChatFailure) and "3 tries" in down.reason and "503" in down.reason
  assert isinstance(bad, ChatFailure) and "400" in bad.reason
  assert sum("down" in json.dumps(r) for r in server.requests) == 3
  assert sum("bad" in json.dumps(r) for r in server.requests) == 1


def test_malformed_response_body_is_a_failure():
  with ScriptedChatServer(lambda req: {"choices": []}) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    (out,) = backend.chat([_conv("x")], SamplingParams())
    backend.close()
  assert isinstance(out, ChatFailure) and "malformed" in out.reason


def test_max_requests_bounds_the_server():
  with ScriptedChatServer(lambda req: "a", max_requests=1) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", max_retries=0)
    first, second = backend.chat([_conv("1")], SamplingParams()) + backend.chat(
        [_conv("2")], SamplingParams())
    backend.close()
  assert first == "a" and isinstance(second, ChatFailure)


def test_schema_rejected_with_400_falls_back_to_plain_json():
  def respond(req):
    return 400 if "response_format" in req else '{"query": "q"}'

  with ScriptedChatServer(respond) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    out = backend.chat([_conv("a"), _conv("b")], SamplingParams(), json_schema={"type": "object"})
    assert out == ['{"query": "q"}'] * 2
    assert backend.structured_output is False
    n = len(server.requests)
    backend.chat([_conv("c")], SamplingParams(), json_schema={"type": "object"})
    assert len(server.requests) == n + 1 and "response_format" not in server.requests[-1]
    backend.close()
