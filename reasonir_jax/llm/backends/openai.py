"""`openai` backend: any OpenAI-compatible endpoint (e.g. `vllm serve`), through the official
`openai` client.

Chat requests go to `chat/completions`; raw prompts (`submit_completion` / `complete`: no chat
template) go to `completions` with `prompt` and are read from `choices[0].text`, through the
same stream and failure handling.

Continuous submission: every request is its own future on a pool of `max_concurrency` worker
threads sharing one client (its connection pool is thread-safe), so up to that many requests are
in flight at all times; callers submit the next request as soon as one finishes, never waiting
for a whole batch, and a slow request holds only its own slot. The client does the transport:
the per-request `timeout` and the retries (`max_retries` extra tries on timeouts, connection
errors, HTTP 408, 409, 429 and 5xx), each waiting what the server's `Retry-After` asks (the
client refuses a wait over two minutes: that request fails at once) or else our backoff
(`backoff_s` doubling per retry up to `max_backoff_s`, with jitter). A retry waits inside its
worker, holding that slot. Other 4xx fail at once. An answer cut off by the token limit
(`finish_reason="length"`) is a ChatFailure of kind "length" carrying the text so far (the plain
text, for a raw request with `keep_truncated`). Stop strings go in the request's `stop` field.
A failed request becomes a `ChatFailure` result, never an exception.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import random
import threading
from typing import Sequence

import openai

from reasonir_jax.llm.meter import InFlightMeter
from reasonir_jax.llm.types import ChatFailure, Message, SamplingParams, StreamingChatBackend

log = logging.getLogger(__name__)

_RETRIED_STATUS = (408, 409, 429)  # and every 5xx: what the client retries


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """Where a request is posted and how its answer is read."""
  path: str = "chat/completions"  # or "completions": a raw prompt, no chat template
  keep_truncated: bool = False  # an answer cut off at max_tokens is its text, not a failure

  def content(self, choice: dict):
    return choice["text"] if self.path == "completions" else choice["message"]["content"]


CHAT = Endpoint()


class _Client(openai.OpenAI):
  """The official client with our wait between retries when the server names none.

  The client's own backoff (0.5 s doubling to 8 s) is fixed; `--retry-backoff` sets ours, so this
  one hook, a private method of the pinned client, is replaced (a test checks that it is the one
  used). The server's Retry-After still wins, as in the client."""

  def __init__(self, *, backoff_s: float, max_backoff_s: float, **kwargs):
    super().__init__(**kwargs)
    self.backoff_s = backoff_s
    self.max_backoff_s = max_backoff_s

  def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):
    wait = self._parse_retry_after_header(response_headers)
    if wait is not None and math.isfinite(wait) and wait > 0:
      return wait  # the client does not retry at all past its two-minute limit
    attempt = options.get_max_retries(self.max_retries) - remaining_retries
    delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
    return delay * (0.5 + random.random() / 2)


def _tries(error: openai.APIError) -> int:
  """How many times the client sent the request that ended in `error` (it numbers its retries in
  a request header)."""
  try:
    return int(error.request.headers.get("x-stainless-retry-count", 0)) + 1
  except (AttributeError, TypeError, ValueError):
    return 1


class OpenAIBackend(StreamingChatBackend):
  name = "openai"
  raw_completion = True

  def __init__(self, base_url: str, model: str, api_key: str | None = None,
               max_concurrency: int = 256, request_timeout_s: float = 600.0,
               max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
               structured_output: bool = True):
    """`base_url` ends in /v1 (e.g. http://localhost:8000/v1); `api_key` defaults to the
    OPENAI_API_KEY environment variable (vLLM accepts any key unless started with one);
    `max_concurrency` is the number of requests in flight; `max_retries` counts extra tries
    after the first."""
    if not base_url:
      raise ValueError("openai backend: --base-url is required (e.g. http://localhost:8000/v1)")
    if not model:
      raise ValueError("openai backend: --model is required (the served model name)")
    if max_concurrency < 1:
      raise ValueError(f"openai backend: --max-concurrency must be >= 1, got {max_concurrency}")
    if max_retries < 0:
      raise ValueError(f"openai backend: --max-retries must be >= 0, got {max_retries}")
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
    self.max_concurrency = max_concurrency
    self.request_timeout_s = request_timeout_s
    self.max_retries = max_retries
    self.structured_output = structured_output
    self._client = _Client(base_url=self.base_url, api_key=self.api_key,
                           timeout=request_timeout_s, max_retries=max_retries,
                           backoff_s=backoff_s, max_backoff_s=max_backoff_s)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency,
                                                       thread_name_prefix="openai-chat")
    self.num_retries = 0  # retried requests over the backend's lifetime (for reports)
    self._lock = threading.Lock()
    self.meter = InFlightMeter()

  def build_request(self, messages: Sequence[Message], sampling: SamplingParams,
                    json_schema: dict | None) -> dict:
    body = {"model": self.model, "messages": [dict(m) for m in messages],
            **self._sampling_fields(sampling)}
    if json_schema is not None and self.structured_output:
      body["response_format"] = {
          "type": "json_schema",
          "json_schema": {"name": "answer", "schema": json_schema, "strict": True},
      }
    return body

  def build_completion_request(self, prompt: str, sampling: SamplingParams) -> dict:
    return {"model": self.model, "prompt": prompt, **self._sampling_fields(sampling)}

  @staticmethod
  def _sampling_fields(sampling: SamplingParams) -> dict:
    """The sampling fields of both request kinds (penalties and stop strings only when on)."""
    fields = {"temperature": sampling.temperature, "top_p": sampling.top_p,
              "max_tokens": sampling.max_tokens, "seed": sampling.seed, **sampling.penalties()}
    if sampling.stop:  # the server ends the answer there and leaves the stop string out
      fields["stop"] = list(sampling.stop)
    return fields

  # --- the request stream ---------------------------------------------------------------------
  def submit(self, messages: Sequence[Message], sampling: SamplingParams,
             json_schema: dict | None = None) -> concurrent.futures.Future:
    return self._dispatch(self.build_request(messages, sampling, json_schema), CHAT)

  def submit_completion(self, prompt: str, sampling: SamplingParams, *,
                        keep_truncated: bool = False) -> concurrent.futures.Future:
    return self._dispatch(self.build_completion_request(prompt, sampling),
                          Endpoint("completions", keep_truncated))

  def _dispatch(self, body: dict, endpoint: Endpoint) -> concurrent.futures.Future:
    try:
      return self._pool.submit(self._answer, body, endpoint)
    except RuntimeError:  # the pool is shut down
      done: concurrent.futures.Future = concurrent.futures.Future()
      done.set_result(ChatFailure("backend closed before the request was sent"))
      return done

  def _answer(self, body: dict, endpoint: Endpoint) -> str | ChatFailure:
    """The answer to one request (the client's retries included), never an exception."""
    try:
      result = self._send(body, endpoint)
      if result == "plain":
        # The endpoint rejected response_format: resend once without it.
        plain = {k: v for k, v in body.items() if k != "response_format"}
        result = self._send(plain, endpoint)
        if not isinstance(result, ChatFailure) and self.structured_output:
          log.warning("%s rejected response_format json_schema; continuing without structured "
                      "output", self.base_url)
          self.structured_output = False
      return result
    except Exception as e:  # never leave a future with an exception
      return ChatFailure(f"unexpected client error: {e!r}")

  def _count_retries(self, tries: int) -> None:
    with self._lock:
      self.num_retries += tries - 1

  def _send(self, body: dict, endpoint: Endpoint):
    """The answer text, a ChatFailure, or "plain" (response_format rejected with HTTP 400)."""
    client = self._client
    api = client.completions if endpoint.path == "completions" else client.chat.completions
    self.meter.enter()
    try:
      response = api.with_raw_response.create(**body)
    except openai.APIStatusError as e:
      tries = _tries(e)
      self._count_retries(tries)
      status = e.status_code
      if status == 400 and "response_format" in body:
        return "plain"
      if status in _RETRIED_STATUS or status >= 500:
        return ChatFailure(f"gave up after {tries} tries; last: HTTP {status}: "
                           f"{e.response.text[:200]}")
      return ChatFailure(f"HTTP {status} (not retried): {e.response.text[:300]}")
    except openai.APITimeoutError as e:  # a subclass of APIConnectionError: first
      tries = _tries(e)
      self._count_retries(tries)
      return ChatFailure(f"gave up after {tries} tries; last: timeout after "
                         f"{self.request_timeout_s}s ({self.base_url})")
    except openai.APIConnectionError as e:
      tries = _tries(e)
      self._count_retries(tries)
      return ChatFailure(f"gave up after {tries} tries; last: connection error ({self.base_url}): "
                         f"{e.__cause__ or e}")
    finally:
      self.meter.exit()
    self._count_retries(response.retries_taken + 1)
    text = response.http_response.text
    try:
      choice = response.http_response.json()["choices"][0]
      content = endpoint.content(choice)
    except (ValueError, KeyError, IndexError, TypeError) as e:
      return ChatFailure(f"malformed response ({type(e).__name__}: {e}): {text[:300]}")
    if not isinstance(content, str):
      return ChatFailure(f"response content is {type(content).__name__}, not text")
    if choice.get("finish_reason") == "length" and not endpoint.keep_truncated:
      return ChatFailure(f"answer cut off at max_tokens={body.get('max_tokens')} "
                         "(finish_reason=length)", kind="length", text=content)
    return content

  def list_models(self) -> list[str]:
    """The model ids the endpoint serves (GET /models); a quick health check."""
    return [m.id for m in self._client.models.list()]

  def close(self) -> None:
    self._pool.shutdown(wait=True)
    self._client.close()
