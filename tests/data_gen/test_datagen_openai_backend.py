"""The scripted loopback server and the `openai` backend: answers, retries, timeouts, failures."""
import json

import requests

from data_gen.testing import ScriptedChatServer, last_user_message, sequence_responder
from reasonir_jax.llm.backends import make_backend
from reasonir_jax.llm.types import ChatFailure, SamplingParams


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


def test_retry_after_is_honoured():
  # The openai client reads Retry-After (seconds or an HTTP date) itself.
  import time
  answers = [("status", 429, {"Retry-After": "0.6"}), "ok"]
  with ScriptedChatServer(sequence_responder(answers)) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", backoff_s=0.001)
    start = time.monotonic()
    assert backend.chat([_conv("x")], SamplingParams()) == ["ok"]
    assert time.monotonic() - start >= 0.55  # waited what the server asked, not 1 ms
    backend.close()


def test_retry_after_over_two_minutes_fails_at_once():
  # The client will not wait longer than two minutes; such a request fails with its status.
  with ScriptedChatServer(lambda req: ("status", 429, {"Retry-After": "600"})) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", backoff_s=0.001)
    (out,) = backend.chat([_conv("x")], SamplingParams())
    backend.close()
  assert isinstance(out, ChatFailure) and "1 tries" in out.reason and "429" in out.reason
  assert len(server.requests) == 1 and backend.num_retries == 0


def test_retry_backoff_sets_the_wait_between_retries():
  # --retry-backoff replaces the client's own backoff (0.5 s doubling), both ways.
  import time
  for backoff_s, fast in ((0.001, True), (0.4, False)):
    with ScriptedChatServer(sequence_responder([500, 500, "ok"])) as server:
      backend = make_backend("openai", base_url=server.base_url, model="m", backoff_s=backoff_s)
      start = time.monotonic()
      assert backend.chat([_conv("x")], SamplingParams()) == ["ok"]
      elapsed = time.monotonic() - start
      backend.close()
    assert backend.num_retries == 2
    # Waits: backoff_s, then 2 x backoff_s, each times a jitter in [0.5, 1].
    assert elapsed < 0.3 if fast else elapsed >= 0.6, (backoff_s, elapsed)


def test_connection_error_is_retried_and_names_the_url():
  import socket
  with socket.socket() as sock:  # a port nothing listens on once closed
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  url = f"http://127.0.0.1:{port}/v1"
  backend = make_backend("openai", base_url=url, model="m", max_retries=1, backoff_s=0.001)
  (out,) = backend.chat([_conv("x")], SamplingParams())
  backend.close()
  assert isinstance(out, ChatFailure) and "2 tries" in out.reason and url in out.reason
  assert "connection error" in out.reason and backend.num_retries == 1


def test_finish_reason_length_is_its_own_failure_kind():
  with ScriptedChatServer(lambda req: ("length", '{"query": "cut')) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    (out,) = backend.chat([_conv("x")], SamplingParams(max_tokens=5))
    backend.close()
  assert isinstance(out, ChatFailure) and out.kind == "length" and "max_tokens=5" in out.reason
  assert out.text == '{"query": "cut'  # the answer as cut, for callers that use it (query rewriting)


def test_continuous_submission_keeps_requests_in_flight_and_requeues_retries():
  import threading
  lock, seen = threading.Lock(), {}
  all_in = threading.Event()  # all 16 requests and q0's retry have reached the server

  def respond(req):
    text = last_user_message(req)
    with lock:
      seen[text] = seen.get(text, 0) + 1
      first = seen[text] == 1
      if sum(seen.values()) == 17:
        all_in.set()
    if text == "q0" and first:
      return 503  # retried while the others keep going
    # Answers wait until every request is in, so "all 16 in flight at once" does not depend on
    # how fast threads start on a loaded machine; a backend that sent them one at a time would
    # time out here and fail the elapsed-time check.
    all_in.wait(timeout=3)
    return ("sleep", 0.1, "a:" + text)

  with ScriptedChatServer(respond) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", max_concurrency=16,
                           backoff_s=0.01)
    futures = [backend.submit(_conv(f"q{i}"), SamplingParams()) for i in range(16)]
    out = [f.result(timeout=10) for f in futures]
    stats = backend.meter.summary()
    backend.close()
  assert out == [f"a:q{i}" for i in range(16)]
  assert stats["peak_in_flight"] == 16 and backend.num_retries == 1
  assert stats["elapsed_s"] < 1.5  # all 16 at once (+ one retry), not 16 x 0.3 s


# --- raw prompts: /v1/completions, no chat template ------------------------------------------
def test_raw_completion_posts_the_prompt_to_completions_and_reads_text():
  from data_gen.testing import request_text
  prompt = "Query: why?\nDocument: because.\nRelevance score:"
  with ScriptedChatServer(lambda req: "raw:" + request_text(req)[-6:]) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m0")
    assert backend.raw_completion
    out = backend.complete([prompt, "two"], SamplingParams(temperature=0.6, top_p=0.9,
                                                           max_tokens=32, seed=42))
    chat = backend.chat([_conv("c")], SamplingParams())
    backend.close()
  assert out == ["raw:score:", "raw:two"] and chat == ["raw:c"]
  assert sorted(server.paths) == ["/v1/chat/completions", "/v1/completions", "/v1/completions"]
  [req] = [r for r in server.requests if r.get("prompt") == prompt]
  # The exact string goes out, with no chat messages and no template around it.
  assert req == {"model": "m0", "prompt": prompt, "temperature": 0.6, "top_p": 0.9,
                 "max_tokens": 32, "seed": 42}


def test_raw_completion_retries_and_length_handling_as_chat():
  answers = [("status", 503, {"Retry-After": "0.3"}), ("length", "Relevance score: 4 becau")]
  with ScriptedChatServer(sequence_responder(answers)) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m", backoff_s=0.001)
    import time
    start = time.monotonic()
    (cut,) = backend.complete(["p"], SamplingParams(max_tokens=5))
    assert time.monotonic() - start >= 0.25  # Retry-After honoured on this endpoint too
    assert backend.num_retries == 1 and server.paths == ["/v1/completions"] * 2
    assert isinstance(cut, ChatFailure) and cut.kind == "length" and "max_tokens=5" in cut.reason
    # Asked to keep cut-off answers (the public reranker parses them), the text comes back.
    kept = backend.submit_completion("p", SamplingParams(max_tokens=5), keep_truncated=True)
    assert kept.result(timeout=10) == "Relevance score: 4 becau"
    backend.close()


def test_penalties_are_sent_only_when_on():
  with ScriptedChatServer(lambda req: "a") as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    backend.chat([_conv("x")], SamplingParams(frequency_penalty=1.0))
    backend.complete(["y"], SamplingParams(frequency_penalty=0.5, presence_penalty=0.25))
    backend.chat([_conv("z")], SamplingParams())
    backend.close()
  x, y, z = server.requests  # one at a time: each call waits for its answer
  assert x["frequency_penalty"] == 1.0 and "presence_penalty" not in x
  assert (y["frequency_penalty"], y["presence_penalty"]) == (0.5, 0.25)
  assert "frequency_penalty" not in z and "presence_penalty" not in z


def test_sampling_to_dict_leaves_out_penalties_that_are_off():
  # Earlier runs' settings (checked on resume) and cache keys hold exactly these four fields.
  assert SamplingParams(max_tokens=9).to_dict() == {"temperature": 0.0, "top_p": 1.0,
                                                    "max_tokens": 9, "seed": 0}
  assert SamplingParams(frequency_penalty=1.0).to_dict()["frequency_penalty"] == 1.0
  assert SamplingParams(presence_penalty=0.5).penalties() == {"presence_penalty": 0.5}


def test_stop_strings_are_sent_and_the_cut_answer_returned():
  from reasonir_jax.llm.types import cut_at_stop

  def respond(req):  # as a server does: the answer ends before the first stop string
    return cut_at_stop("step 1. the answer is (B).\n\nQuestion: next", req.get("stop") or [])

  with ScriptedChatServer(respond) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    sampling = SamplingParams(max_tokens=50, stop=("Question:",))
    [chat] = backend.chat([_conv("x")], sampling)
    [raw] = backend.complete(["p"], sampling)
    [plain] = backend.chat([_conv("y")], SamplingParams())
    backend.close()
  assert chat == raw == "step 1. the answer is (B).\n\n"
  assert plain.endswith("Question: next")
  x, p, y = server.requests
  assert x["stop"] == p["stop"] == ["Question:"] and "stop" not in y


def test_length_failure_carries_the_text_so_far():
  with ScriptedChatServer(lambda req: ("length", "the answer is (C")) as server:
    backend = make_backend("openai", base_url=server.base_url, model="m")
    (out,) = backend.chat([_conv("x")], SamplingParams(max_tokens=5))
    backend.close()
  assert out.kind == "length" and out.text == "the answer is (C"
