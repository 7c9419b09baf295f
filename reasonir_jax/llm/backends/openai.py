"""`openai` backend: any OpenAI-compatible chat endpoint (e.g. `vllm serve`), over plain HTTP.

Chat requests go to `/chat/completions`; raw prompts (`submit_completion` / `complete`: no chat
template) go to `/completions` with `prompt` and are read from `choices[0].text`, through the
same stream, retries and failure handling.

Continuous submission: every request is its own future on a pool of `max_concurrency` worker
threads, so up to that many requests are in flight at all times (callers submit the next
request as soon as one finishes, never waiting for a whole batch). Timeouts, connection errors,
HTTP 429 and 5xx are retried: the retry is put back into the same stream after a delay (the
server's `Retry-After` when it sends one, else exponential backoff with jitter), and its worker
slot is freed meanwhile. Other 4xx fail at once. An answer cut off by the token limit
(`finish_reason="length"`) is a ChatFailure of kind "length" carrying the text so far (the plain
text, for a raw request with `keep_truncated`). Stop strings go in the request's `stop` field.
A failed request becomes a `ChatFailure` result, never an exception.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import logging
import os
import random
import threading
import time
from typing import Sequence

import requests

from reasonir_jax.llm.meter import InFlightMeter
from reasonir_jax.llm.types import ChatFailure, Message, SamplingParams, StreamingChatBackend

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 600.0  # a longer Retry-After is capped (a misconfigured proxy must not stall)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
  """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
  if not value:
    return None
  value = value.strip()
  try:
    seconds = float(value)
  except ValueError:
    try:
      when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
      return None
    if when is None:
      return None
    seconds = when.timestamp() - (time.time() if now is None else now)
  return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """Where a request is posted and how its answer is read."""
  path: str = "chat/completions"  # or "completions": a raw prompt, no chat template
  keep_truncated: bool = False  # an answer cut off at max_tokens is its text, not a failure

  def content(self, choice: dict):
    return choice["text"] if self.path == "completions" else choice["message"]["content"]


CHAT = Endpoint()


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
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
    self.max_concurrency = max_concurrency
    self.request_timeout_s = request_timeout_s
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.max_backoff_s = max_backoff_s
    self.structured_output = structured_output
    self._local = threading.local()
    self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency,
                                                       thread_name_prefix="openai-chat")
    self.num_retries = 0  # retried requests over the backend's lifetime (for reports)
    self._lock = threading.Lock()
    self._timers: dict[threading.Timer, concurrent.futures.Future] = {}
    self._closed = False
    self.meter = InFlightMeter()

  def _session(self) -> requests.Session:
    # requests.Session is not thread-safe: one per worker thread.
    session = getattr(self._local, "session", None)
    if session is None:
      session = self._local.session = requests.Session()
      adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
      session.mount("http://", adapter)
      session.mount("https://", adapter)
    return session

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

  def _backoff_delay(self, attempt: int) -> float:
    delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
    return delay * (0.5 + random.random() / 2)

  # --- the request stream ---------------------------------------------------------------------
  def submit(self, messages: Sequence[Message], sampling: SamplingParams,
             json_schema: dict | None = None) -> concurrent.futures.Future:
    outer: concurrent.futures.Future = concurrent.futures.Future()
    self._dispatch(self.build_request(messages, sampling, json_schema), 0, outer, False, CHAT)
    return outer

  def submit_completion(self, prompt: str, sampling: SamplingParams, *,
                        keep_truncated: bool = False) -> concurrent.futures.Future:
    outer: concurrent.futures.Future = concurrent.futures.Future()
    self._dispatch(self.build_completion_request(prompt, sampling), 0, outer, False,
                   Endpoint("completions", keep_truncated))
    return outer

  def _dispatch(self, body: dict, attempt: int, outer, plain_retry: bool,
                endpoint: Endpoint) -> None:
    try:
      self._pool.submit(self._attempt, body, attempt, outer, plain_retry, endpoint)
    except RuntimeError:  # the pool is shut down
      outer.set_result(ChatFailure("backend closed before the request was sent"))

  def _requeue(self, delay_s: float, body: dict, attempt: int, outer, endpoint: Endpoint) -> None:
    """Puts a retry back into the stream after `delay_s`, without holding a worker slot."""
    with self._lock:
      self.num_retries += 1
      if self._closed:
        outer.set_result(ChatFailure("backend closed while a retry was waiting"))
        return

      def fire():
        with self._lock:
          self._timers.pop(timer, None)
        self._dispatch(body, attempt, outer, False, endpoint)

      timer = threading.Timer(delay_s, fire)
      timer.daemon = True
      self._timers[timer] = outer
    timer.start()

  def _attempt(self, body: dict, attempt: int, outer, plain_retry: bool,
               endpoint: Endpoint) -> None:
    self.meter.enter()
    try:
      result, retry_delay = self._post_once(body, attempt, endpoint)
    except Exception as e:  # never leave a future unresolved
      result, retry_delay = ChatFailure(f"unexpected client error: {e!r}"), None
    finally:
      self.meter.exit()
    if result == "plain":
      # The endpoint rejected response_format: resend once without it.
      plain = {k: v for k, v in body.items() if k != "response_format"}
      self._dispatch(plain, attempt, outer, True, endpoint)
      return
    if retry_delay is not None:
      self._requeue(retry_delay, body, attempt + 1, outer, endpoint)
      return
    if plain_retry and not isinstance(result, ChatFailure) and self.structured_output:
      log.warning("%s rejected response_format json_schema; continuing without structured "
                  "output", self.base_url)
      self.structured_output = False
    outer.set_result(result)

  def _post_once(self, body: dict, attempt: int, endpoint: Endpoint = CHAT):
    """(result, None), ("plain", None) or (None, seconds until the retry)."""
    url = f"{self.base_url}/{endpoint.path}"
    headers = {"Authorization": f"Bearer {self.api_key}"}
    can_retry = attempt < self.max_retries

    def give_up(reason: str):
      return ChatFailure(f"gave up after {attempt + 1} tries; last: {reason}"), None

    try:
      response = self._session().post(url, json=body, headers=headers,
                                      timeout=self.request_timeout_s)
    except requests.Timeout:
      reason = f"timeout after {self.request_timeout_s}s"
      return (None, self._backoff_delay(attempt)) if can_retry else give_up(reason)
    except requests.ConnectionError as e:
      reason = f"connection error: {e}"
      return (None, self._backoff_delay(attempt)) if can_retry else give_up(reason)
    status = response.status_code
    if status == 429 or status >= 500:
      if not can_retry:
        return give_up(f"HTTP {status}: {response.text[:200]}")
      wait = parse_retry_after(response.headers.get("Retry-After"))
      return None, (wait if wait is not None else self._backoff_delay(attempt))
    if status == 400 and "response_format" in body:
      return "plain", None
    if status != 200:
      return ChatFailure(f"HTTP {status} (not retried): {response.text[:300]}"), None
    try:
      choice = response.json()["choices"][0]
      content = endpoint.content(choice)
    except (ValueError, KeyError, IndexError, TypeError) as e:
      return ChatFailure(f"malformed response ({type(e).__name__}: {e}): "
                         f"{response.text[:300]}"), None
    if not isinstance(content, str):
      return ChatFailure(f"response content is {type(content).__name__}, not text"), None
    if choice.get("finish_reason") == "length" and not endpoint.keep_truncated:
      return ChatFailure(f"answer cut off at max_tokens={body.get('max_tokens')} "
                         "(finish_reason=length)", kind="length", text=content), None
    return content, None

  def list_models(self) -> list[str]:
    """The model ids the endpoint serves (GET /models); a quick health check."""
    response = self._session().get(f"{self.base_url}/models",
                                   headers={"Authorization": f"Bearer {self.api_key}"},
                                   timeout=self.request_timeout_s)
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]

  def close(self) -> None:
    with self._lock:
      self._closed = True
      timers = dict(self._timers)
      self._timers.clear()
    for t, outer in timers.items():
      t.cancel()
      if not outer.done():
        outer.set_result(ChatFailure("backend closed while a retry was waiting"))
    self._pool.shutdown(wait=True)
