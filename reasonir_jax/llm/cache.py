"""An on-disk cache of LLM answers for the evaluation's LLM stages (rewriting, reranking).

One JSON lines file per stage and task; a row is appended (and flushed) as soon as its answer
arrives, so a killed run loses at most the requests in flight and a rerun asks only for what is
missing. The key covers the model, the protocol, the sampling parameters (`to_dict`: every
parameter, penalties and stop strings only when set), the whole request (whose text holds the prompt, the query
and, for reranking, the document) and, for a raw prompt, how it was sent (no chat template;
whether a cut-off answer is kept), so a chat answer is never reused for a raw request. Chat keys
are what they were before raw requests, penalties and stop strings existed: earlier cache files
stay valid. Failed requests are not stored: a rerun tries them again. An answer cut at the token
budget is stored (marked `"cut": true`) only for a caller that uses cut answers (`keep_cut`, query
rewriting as ReasonIR does it), and read back as such: a ChatFailure of kind "length" holding the
text. A torn last line (a kill mid-write) is skipped.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from typing import Sequence

from reasonir_jax.llm.types import ChatFailure

log = logging.getLogger(__name__)


def open_cache(out_dir: str, task: str) -> AnswerCache:
  """The answer cache of one task beside the stage's outputs (`out_dir/cache/<task>.jsonl`). An
  object store cannot append, so for a remote `out_dir` the cache lives on local disk under
  $REASONIR_CACHE (default ~/.cache/reasonir_jax), in a folder named after `out_dir`."""
  from reasonir_jax import paths
  if not paths.is_remote(out_dir):
    return AnswerCache(os.path.join(out_dir, "cache", f"{task}.jsonl"))
  path = os.path.join(paths.local_mirror(out_dir, "llm_answers"), f"{task}.jsonl")
  log.info("answer cache of %s (remote) kept locally at %s", out_dir, path)
  return AnswerCache(path)


def request_key(model: str, protocol: str, messages, sampling, *, raw: bool = False,
                keep_truncated: bool = False) -> str:
  """`messages`: a chat request's message list, or with `raw` the prompt string."""
  fields = [model, protocol, messages, sampling.to_dict()]
  if raw:  # a fifth field only for raw requests keeps the chat keys of earlier caches
    fields.append({"endpoint": "completions", "keep_truncated": keep_truncated})
  payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
  def __init__(self, path: str):
    self.path = path
    self.answers: dict[str, str] = {}
    self.cut: set[str] = set()  # keys whose answer stopped at the token budget
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
          try:
            row = json.loads(line)
            self.answers[row["key"]] = row["answer"]
            if row.get("cut"):
              self.cut.add(row["key"])
          except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: unreadable cache row skipped (interrupted write?)", path, n)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = None

  def get(self, key: str, keep_cut: bool = False):
    """The cached answer: its text, a ChatFailure of kind "length" for a cut one (None unless
    `keep_cut`: a caller that drops cut answers asks again), or None."""
    answer = self.answers.get(key)
    if answer is None or key not in self.cut:
      return answer
    if not keep_cut:
      return None
    return ChatFailure("answer cut at max_tokens (from the cache)", kind="length", text=answer)

  def put(self, key: str, answer: str, cut: bool = False) -> None:
    if self._file is None:
      needs_newline = os.path.isfile(self.path) and os.path.getsize(self.path) > 0 and not _ends_with_newline(
          self.path)
      self._file = open(self.path, "a", encoding="utf-8")
      if needs_newline:  # a torn last row stays on its own line
        self._file.write("\n")
    row = {"key": key, "answer": answer} | ({"cut": True} if cut else {})
    self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
    self._file.flush()
    self.answers[key] = answer
    if cut:
      self.cut.add(key)
    else:
      self.cut.discard(key)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


def cached_generate(backend, cache: AnswerCache | None, requests: Sequence, sampling, *, protocol: str,
                    batch_size: int = 64, raw: bool = False, keep_truncated: bool = False,
                    keep_cut: bool = False) -> tuple[list, int]:
  """Answers (text or ChatFailure) for `requests` (message lists; with `raw`, prompt strings sent
  with no chat template through `backend.complete`), in order; returns them and the number of
  requests sent. Answers already in `cache` are reused; each new answer is appended as it arrives
  (a streaming backend's futures as they finish; others per batch of `batch_size`). With
  `keep_cut`, an answer cut at the token budget (a ChatFailure of kind "length" with its text) is
  cached too, and comes back as that ChatFailure."""
  model = getattr(backend, "model", "")
  keys = [request_key(model, protocol, r, sampling, raw=raw, keep_truncated=keep_truncated) for r in requests]
  answers: list = [cache.get(k, keep_cut) if cache is not None else None for k in keys]
  todo = [i for i, a in enumerate(answers) if a is None]
  if cache is not None and len(todo) < len(requests):
    log.info("%s: %d of %d answers from the cache", cache.path, len(requests) - len(todo), len(requests))

  def record(i, answer):
    answers[i] = answer
    if cache is None:
      return
    if not isinstance(answer, ChatFailure):
      cache.put(keys[i], answer)
    elif keep_cut and answer.kind == "length" and answer.text is not None:
      cache.put(keys[i], answer.text, cut=True)

  kw = {"keep_truncated": keep_truncated} if raw else {}
  submit = getattr(backend, "submit_completion" if raw else "submit", None)
  generate = backend.complete if raw else backend.chat
  if submit is not None:
    futures = {submit(requests[i], sampling, **kw): i for i in todo}
    for f in concurrent.futures.as_completed(futures):
      record(futures[f], f.result())
  else:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      for i, answer in zip(chunk, generate([requests[i] for i in chunk], sampling, **kw)):
        record(i, answer)
  return answers, len(todo)
