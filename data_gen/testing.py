"""A scripted OpenAI-compatible chat server on loopback, for tests and offline dry runs.

`responder(request_json)` decides every answer to POST /v1/chat/completions and (raw prompts, no
chat template) POST /v1/completions, whose answer text goes in `choices[0].text`:
  - a `str`: the assistant message content, or the completion text (HTTP 200);
  - an `int`: fail with that HTTP status code (e.g. 500, 503, 429, 400);
  - `("sleep", seconds)` or `("sleep", seconds, answer)`: wait first (to force a client
    timeout), then answer with `answer` (default "");
  - a `dict`: sent as the raw JSON response body (HTTP 200), for malformed-response tests;
  - `("status", code, headers)`: fail with that status and extra headers (e.g. Retry-After);
  - `("length", answer)`: `answer` with finish_reason "length" (cut off at max_tokens).

    with ScriptedChatServer(lambda req: '{"hard_query": ["q"]}') as server:
      backend = OpenAIBackend(base_url=server.base_url, model="m")
      ...
      server.requests  # every request body received, in arrival order
      server.paths     # the path each was posted to ("/v1/chat/completions" or "/v1/completions")

The server listens on 127.0.0.1 on an ephemeral port, serves each request on its own thread,
and stops when the context exits (pending sleeps are cut short).
"""
from __future__ import annotations

import http.server
import itertools
import json
import socket
import threading
import time
from typing import Any, Callable, Sequence

Answer = Any  # str | int | tuple | dict
Responder = Callable[[dict], Answer]


def sequence_responder(answers: Sequence[Answer]) -> Responder:
  """A responder that gives `answers` in order, then repeats the last one."""
  if not answers:
    raise ValueError("sequence_responder needs at least one answer")
  lock = threading.Lock()
  counter = itertools.count()

  def respond(request: dict) -> Answer:
    del request
    with lock:
      i = next(counter)
    return answers[min(i, len(answers) - 1)]

  return respond


def last_user_message(request: dict) -> str:
  """The content of the last user message of a chat request (handy in responders)."""
  for message in reversed(request.get("messages", [])):
    if message.get("role") == "user":
      return str(message.get("content", ""))
  return ""


def request_text(request: dict) -> str:
  """The prompt of a raw completion request, else the last user message of a chat request."""
  if "prompt" in request:
    return str(request["prompt"])
  return last_user_message(request)


CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


def _completion_body(content: str, model: str, finish_reason: str = "stop",
                     raw: bool = False) -> dict:
  if raw:
    choice = {"index": 0, "finish_reason": finish_reason, "text": content}
  else:
    choice = {"index": 0, "finish_reason": finish_reason,
              "message": {"role": "assistant", "content": content}}
  return {
      "id": f"{'cmpl' if raw else 'chatcmpl'}-{time.monotonic_ns()}",
      "object": "text_completion" if raw else "chat.completion",
      "created": int(time.time()),
      "model": model,
      "choices": [choice],
      "usage": {"prompt_tokens": 0, "completion_tokens": len(content.split()),
                "total_tokens": len(content.split())},
  }


class ScriptedChatServer:
  """Loopback HTTP server speaking the OpenAI chat-completions (and completions) protocol with
  scripted answers."""

  def __init__(self, responder: Responder, model: str = "scripted-model",
               max_requests: int | None = None):
    """`max_requests` bounds how many requests are answered; later ones get HTTP 503."""
    self.responder = responder
    self.model = model
    self.max_requests = max_requests
    self.requests: list[dict] = []
    self.paths: list[str] = []
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._connections: set[socket.socket] = set()
    self._httpd: http.server.ThreadingHTTPServer | None = None
    self._thread: threading.Thread | None = None

  @property
  def base_url(self) -> str:
    if self._httpd is None:
      raise RuntimeError("ScriptedChatServer is not running; use it as a context manager")
    host, port = self._httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def __enter__(self) -> "ScriptedChatServer":
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def setup(self):
        super().setup()
        with server._lock:
          server._connections.add(self.connection)

      def finish(self):
        try:
          super().finish()
        finally:
          with server._lock:
            server._connections.discard(self.connection)

      def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

      def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
          self.send_response(status)
          for key, value in (headers or {}).items():
            self.send_header(key, str(value))
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client gave up (timeout); nothing to answer

      def do_GET(self):  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
          self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
        else:
          self._send(404, {"error": {"message": f"no route {self.path}"}})

      def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path not in (CHAT_PATH, COMPLETIONS_PATH):
          self._send(404, {"error": {"message": f"no route {self.path}"}})
          return
        raw_prompt = path == COMPLETIONS_PATH
        try:
          request = json.loads(raw)
        except json.JSONDecodeError as e:
          self._send(400, {"error": {"message": f"request body is not JSON: {e}"}})
          return
        with server._lock:
          server.requests.append(request)
          server.paths.append(path)
          over = server.max_requests is not None and len(server.requests) > server.max_requests
        if over:
          self._send(503, {"error": {"message": "scripted server: max_requests reached"}})
          return
        try:
          answer = server.responder(request)
        except Exception as e:  # a broken script is a server error, visible to the client
          self._send(500, {"error": {"message": f"responder raised {e!r}"}})
          return
        if isinstance(answer, tuple) and answer and answer[0] == "sleep":
          server._stop.wait(float(answer[1]))
          answer = answer[2] if len(answer) > 2 else ""
        if isinstance(answer, tuple) and len(answer) == 3 and answer[0] == "status":
          self._send(int(answer[1]), {"error": {"message": f"scripted failure {answer[1]}"}},
                     answer[2])
        elif isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "length":
          self._send(200, _completion_body(answer[1], request.get("model", server.model),
                                           finish_reason="length", raw=raw_prompt))
        elif isinstance(answer, bool) or not isinstance(answer, (str, int, dict)):
          self._send(500, {"error": {"message": f"responder returned {answer!r}"}})
        elif isinstance(answer, int):
          self._send(answer, {"error": {"message": f"scripted failure {answer}",
                                        "code": answer}})
        elif isinstance(answer, dict):
          self._send(200, answer)
        else:
          self._send(200, _completion_body(answer, request.get("model", server.model),
                                           raw=raw_prompt))

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={"poll_interval": 0.05}, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._httpd is not None:
      self._httpd.shutdown()
      self._httpd.server_close()
    with self._lock:  # end idle keep-alive connections, so no handler thread outlives us
      for conn in list(self._connections):
        try:
          conn.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass
    if self._thread is not None:
      self._thread.join(timeout=5)
