"""A minimal local GCS JSON-API server for TensorStore's gcs driver (what Orbax writes arrays
with): objects are files under ROOT/BUCKET/..., the same tree tests/fake_bucket.py serves to
fsspec, so Orbax's two halves (epath metadata, TensorStore arrays) see one bucket, offline.

Start with `start(root)`; it returns the environment TensorStore needs
(TENSORSTORE_GCS_HTTP_URL pointing here, a test token).
"""
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _generation(path):
  return os.stat(path).st_mtime_ns


class _Handler(BaseHTTPRequestHandler):
  root = ""

  def log_message(self, *args):
    pass

  def _send(self, code, body=b"", headers=None, content_type="application/json"):
    if isinstance(body, (dict, list)):
      body = json.dumps(body).encode()
    self.send_response(code)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    parts = url.path.split("/")
    # /storage/v1/b/BUCKET/o[/OBJECT] or /upload/storage/v1/b/BUCKET/o
    i = parts.index("b")
    bucket = parts[i + 1]
    obj = urllib.parse.unquote("/".join(parts[i + 3:])) if len(parts) > i + 3 else None
    return bucket, obj, query

  def _meta(self, bucket, name, path):
    st = os.stat(path)
    return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(st.st_size),
            "generation": str(st.st_mtime_ns), "metageneration": "1"}

  def _precondition(self, path, query):
    gen = _generation(path) if os.path.isfile(path) else 0
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != gen:
      return False
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == gen:
      return None
    return True

  def do_GET(self):  # noqa: N802
    bucket, obj, query = self._parse()
    if not os.path.isdir(os.path.join(self.root, bucket)):
      return self._send(404, {"error": {"code": 404, "message": "no such bucket"}})
    if obj is None:
      return self._list(bucket, query)
    path = os.path.join(self.root, bucket, obj)
    if not os.path.isfile(path):
      return self._send(404, {"error": {"code": 404, "message": "not found"}})
    ok = self._precondition(path, query)
    if ok is False:
      return self._send(412, {"error": {"code": 412}})
    if ok is None:
      return self._send(304, b"", {"x-goog-generation": str(_generation(path))})
    if query.get("alt") != "media":
      return self._send(200, self._meta(bucket, obj, path))
    with open(path, "rb") as f:
      data = f.read()
    gen = str(_generation(path))
    rng = self.headers.get("Range")
    if rng:
      start, _, end = rng.split("=", 1)[1].partition("-")
      start = int(start)
      end = min(int(end), len(data) - 1) if end else len(data) - 1
      if start >= len(data) and data:
        return self._send(416, b"")
      body = data[start:end + 1]
      return self._send(206, body, {"x-goog-generation": gen,
                                    "Content-Range": f"bytes {start}-{end}/{len(data)}"},
                        "application/octet-stream")
    return self._send(200, data, {"x-goog-generation": gen}, "application/octet-stream")

  do_HEAD = do_GET

  def _list(self, bucket, query):
    base = os.path.join(self.root, bucket)
    prefix = query.get("prefix", "")
    start, end = query.get("startOffset", ""), query.get("endOffset")
    items = []
    for dirpath, _, files in os.walk(base):
      for f in files:
        full = os.path.join(dirpath, f)
        name = os.path.relpath(full, base)
        if name.startswith(prefix) and name >= start and (end is None or name < end):
          items.append(self._meta(bucket, name, full))
    items.sort(key=lambda m: m["name"])
    return self._send(200, {"kind": "storage#objects", "items": items})

  def do_POST(self):  # noqa: N802
    bucket, _, query = self._parse()
    length = int(self.headers.get("Content-Length", 0))
    data = self.rfile.read(length)
    name = query["name"]
    path = os.path.join(self.root, bucket, name)
    if not os.path.isdir(os.path.join(self.root, bucket)):
      return self._send(404, {"error": {"code": 404}})
    if self._precondition(path, query) is False:
      return self._send(412, {"error": {"code": 412}})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.upload-{threading.get_ident()}"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return self._send(200, self._meta(bucket, name, path))

  def do_DELETE(self):  # noqa: N802
    bucket, obj, query = self._parse()
    path = os.path.join(self.root, bucket, obj)
    if not os.path.isfile(path):
      return self._send(404, {"error": {"code": 404}})
    if self._precondition(path, query) is False:
      return self._send(412, {"error": {"code": 412}})
    os.remove(path)
    return self._send(204, b"")


def start(root):
  """Serves `root` on a free local port in a daemon thread; returns (server, env)."""
  handler = type("Handler", (_Handler,), {"root": str(root)})
  server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  env = {"TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{server.server_address[1]}",
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token"}
  return server, env
