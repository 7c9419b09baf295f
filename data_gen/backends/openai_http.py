"""`openai` backend: any OpenAI-compatible chat endpoint (e.g. `vllm serve`), over plain HTTP.

Requests run on a bounded thread pool; timeouts, connection errors, HTTP 429 and 5xx are retried
with exponential backoff (plus jitter); other 4xx fail at once. A failed request becomes a
`ChatFailure` in its slot of the result list, never an exception.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import random
import threading
import time
from typing import Sequence

import requests

from data_gen.backends.base import ChatBackend, ChatFailure, Message, SamplingParams

log = logging.getLogger(__name__)


class OpenAIBackend(ChatBackend):
  name = "openai"

  def __init__(self, base_url: str, model: str, api_key: str | None = None,
               max_concurrency: int = 16, request_timeout_s: float = 300.0,
               max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
               structured_output: bool = True):
    """`base_url` ends in /v1 (e.g. http://localhost:8000/v1); `api_key` defaults to the
    OPENAI_API_KEY environment variable (vLLM accepts any key unless started with one);
    `max_retries` counts extra tries after the first."""
    if not base_url:
      raise ValueError("openai backend: --base-url is required (e.g. http://localhost:8000/v1)")
    if not model:
      raise ValueError("openai backend: --model is required (the served model name)")
    if max_concurrency < 1:
      raise ValueError(f"openai backend: max_concurrency must be >= 1, got {max_concurrency}")
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
    self._count_lock = threading.Lock()

  def _session(self) -> requests.Session:
    # requests.Session is not thread-safe: one per worker thread.
    session = getattr(self._local, "session", None)
    if session is None:
      session = self._local.session = requests.Session()
    return session

  def build_request(self, messages: Sequence[Message], sampling: SamplingParams,
                    json_schema: dict | None) -> dict:
    body = {
        "model": self.model,
        "messages": [dict(m) for m in messages],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
    }
    if json_schema is not None and self.structured_output:
      body["response_format"] = {
          "type": "json_schema",
          "json_schema": {"name": "answer", "schema": json_schema, "strict": True},
      }
    return body

  def _backoff(self, attempt: int) -> None:
    delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
    time.sleep(delay * (0.5 + random.random() / 2))

  def _one(self, body: dict) -> str | ChatFailure:
    url = f"{self.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {self.api_key}"}
    reason = "no attempt made"
    for attempt in range(self.max_retries + 1):
      if attempt:
        with self._count_lock:
          self.num_retries += 1
        self._backoff(attempt - 1)
      try:
        response = self._session().post(url, json=body, headers=headers,
                                        timeout=self.request_timeout_s)
      except requests.Timeout:
        reason = f"timeout after {self.request_timeout_s}s"
        continue
      except requests.ConnectionError as e:
        reason = f"connection error: {e}"
        continue
      status = response.status_code
      if status == 429 or status >= 500:
        reason = f"HTTP {status}: {response.text[:200]}"
        continue
      if status == 400 and "response_format" in body:
        # Some endpoints reject json_schema output (or a schema keyword): retry once without
        # it, and keep it off if that works. Answers are validated either way.
        plain = {k: v for k, v in body.items() if k != "response_format"}
        result = self._one(plain)
        if not isinstance(result, ChatFailure):
          if self.structured_output:
            log.warning("%s rejected response_format json_schema (%s); continuing without "
                        "structured output", self.base_url, response.text[:200])
          self.structured_output = False
        return result
      if status != 200:
        return ChatFailure(f"HTTP {status} (not retried): {response.text[:300]}")
      try:
        content = response.json()["choices"][0]["message"]["content"]
      except (ValueError, KeyError, IndexError, TypeError) as e:
        return ChatFailure(f"malformed response ({type(e).__name__}: {e}): {response.text[:300]}")
      if not isinstance(content, str):
        return ChatFailure(f"response content is {type(content).__name__}, not text")
      return content
    return ChatFailure(f"gave up after {self.max_retries + 1} tries; last: {reason}")

  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    bodies = [self.build_request(c, sampling, json_schema) for c in conversations]
    return list(self._pool.map(self._one, bodies))

  def list_models(self) -> list[str]:
    """The model ids the endpoint serves (GET /models); a quick health check."""
    response = self._session().get(f"{self.base_url}/models",
                                   headers={"Authorization": f"Bearer {self.api_key}"},
                                   timeout=self.request_timeout_s)
    response.raise_for_status()
    return [m["id"] for m in response.json().get("data", [])]

  def close(self) -> None:
    self._pool.shutdown(wait=True)
