"""`vllm-async` backend: vLLM's async engine in this process, with continuous submission.

The offline `vllm` backend hands each batch to `llm.chat`, so a batch waits for its slowest
request. This one keeps vLLM's async engine (`vllm.AsyncLLMEngine`, the v1 `AsyncLLM` in recent
releases; built with `AsyncEngineArgs`) on a background asyncio loop thread: every `submit` is its
own engine request, answered the moment it finishes, so the pipelines keep the engine saturated
across batches and re-queue retries into the same stream (as with the `openai` backend, without
a server).

Each request is built as in the offline backend: the chat template is applied here (the prompt
is sent as token ids, so the length check and vLLM see the same tokens), a prompt whose tokens
plus `max_tokens` exceed `max_model_len` is a ChatFailure of kind "prompt_too_long" and never
sent, `finish_reason="length"` is kind "length", and structured JSON output uses the offline
backend's feature detection. `submit_completion` sends a raw prompt (no chat template), as
the offline backend's `complete`. A future never raises: an engine error is a ChatFailure.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import logging
import threading
from typing import Any, Sequence

from reasonir_jax.llm.backends.vllm_offline import (VLLMBackend, chat_prompt_ids, completion_result,
                                                    import_vllm)
from reasonir_jax.llm.backends.vllm_offline import engine_kwargs as vllm_engine_kwargs
from reasonir_jax.llm.meter import InFlightMeter
from reasonir_jax.llm.types import ChatFailure, Message, SamplingParams, StreamingChatBackend

log = logging.getLogger(__name__)

_CLOSED = "backend closed while the request was in flight"


def _engine_class(vllm) -> Any:
  cls = getattr(vllm, "AsyncLLMEngine", None)
  if cls is not None:
    return cls
  try:  # a vLLM that no longer exports the alias
    from vllm.v1.engine.async_llm import AsyncLLM
  except ImportError as e:
    raise ImportError(f"this vLLM has no async engine (AsyncLLMEngine / AsyncLLM): {e}") from e
  return AsyncLLM


async def _maybe_await(value):
  # Some vLLM releases made these getters coroutines, others plain methods.
  return await value if inspect.isawaitable(value) else value


class AsyncVLLMBackend(StreamingChatBackend):
  name = "vllm-async"

  raw_completion = True
  # Sampling parameters, structured output and the length failure exactly as the offline
  # backend builds them (they read only `vllm`, `structured_output` and `max_model_len`).
  _structured_kwargs = VLLMBackend._structured_kwargs
  build_sampling_params = VLLMBackend.build_sampling_params
  _over_limit = VLLMBackend._over_limit

  def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
               gpu_memory_utilization: float = 0.9, dtype: str = "auto", seed: int = 0,
               structured_output: bool = True, vllm_module: Any = None, **engine_kwargs):
    self.vllm = vllm_module if vllm_module is not None else import_vllm()
    self.model = model
    self.structured_output = structured_output
    kwargs = vllm_engine_kwargs(model, tensor_parallel_size, max_model_len,
                                gpu_memory_utilization, dtype, seed, engine_kwargs)
    self.meter = InFlightMeter()
    output_kind = getattr(getattr(self.vllm, "sampling_params", None), "RequestOutputKind", None)
    self._final_only = getattr(output_kind, "FINAL_ONLY", None)
    self._ids = itertools.count()
    self._lock = threading.Lock()
    self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share
    self._tasks: dict[concurrent.futures.Future, concurrent.futures.Future] = {}  # -> outer
    self._running: set[asyncio.Task] = set()  # our generate() tasks, touched on the loop only
    self._closed = False
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-async-loop",
                                    daemon=True)
    self._thread.start()
    try:
      # Built on the loop thread: the engine binds its output handler to the running loop.
      self.engine, self.tokenizer, engine_len = self._on_loop(self._start_engine(kwargs))
    except BaseException:
      self._stop_loop()
      raise
    self.max_model_len = max_model_len or engine_len
    if self.max_model_len is None:
      log.warning("vllm-async: max_model_len unknown; prompts are not length-checked")

  def _on_loop(self, coro):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

  async def _start_engine(self, kwargs: dict):
    engine = _engine_class(self.vllm).from_engine_args(self.vllm.AsyncEngineArgs(**kwargs))
    tokenizer = await _maybe_await(engine.get_tokenizer())
    config = getattr(engine, "model_config", None)
    if config is None and hasattr(engine, "get_model_config"):
      config = await _maybe_await(engine.get_model_config())
    value = getattr(config, "max_model_len", None)
    return engine, tokenizer, int(value) if value else None

  def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
    """The prompt's token ids under the model's chat template (as vLLM's chat() builds it)."""
    with self._tokenizer_lock:
      return chat_prompt_ids(self.tokenizer, messages)

  def raw_prompt_ids(self, prompt: str) -> list[int]:
    """A raw prompt's token ids as vLLM's generate() tokenizes a string (no chat template)."""
    with self._tokenizer_lock:
      return list(self.tokenizer.encode(prompt))

  # --- the request stream ---------------------------------------------------------------------
  def submit(self, messages: Sequence[Message], sampling: SamplingParams,
             json_schema: dict | None = None) -> concurrent.futures.Future:
    return self._send(lambda: self.prompt_ids(messages), sampling, json_schema, False)

  def submit_completion(self, prompt: str, sampling: SamplingParams, *,
                        keep_truncated: bool = False) -> concurrent.futures.Future:
    return self._send(lambda: self.raw_prompt_ids(prompt), sampling, None, keep_truncated)

  def _send(self, tokenize, sampling: SamplingParams, json_schema: dict | None,
            keep_truncated: bool) -> concurrent.futures.Future:
    outer: concurrent.futures.Future = concurrent.futures.Future()
    try:
      ids = tokenize()
      too_long = self._over_limit(len(ids), sampling.max_tokens)
      if too_long is not None:
        outer.set_result(too_long)  # never sent
        return outer
      params = self.build_sampling_params(sampling, json_schema)
      if self._final_only is not None:
        params.output_kind = self._final_only  # one output per request, not one per token
    except Exception as e:  # a template or parameter error fails this request only
      outer.set_result(ChatFailure(f"could not build the vLLM request: {e!r}"))
      return outer
    with self._lock:
      if self._closed:
        outer.set_result(ChatFailure("backend closed before the request was sent"))
        return outer
      task = asyncio.run_coroutine_threadsafe(
          self._generate(ids, params, sampling.max_tokens, keep_truncated), self._loop)
      self._tasks[task] = outer
    task.add_done_callback(self._resolve)
    return outer

  def _resolve(self, task: concurrent.futures.Future) -> None:
    with self._lock:
      outer = self._tasks.pop(task, None)
    if outer is None or outer.done():
      return
    if task.cancelled():
      outer.set_result(ChatFailure(_CLOSED))
    elif task.exception() is not None:
      outer.set_result(ChatFailure(f"vLLM error: {task.exception()!r}"))
    else:
      outer.set_result(task.result())

  async def _generate(self, ids: list[int], params, max_tokens: int,
                      keep_truncated: bool) -> str | ChatFailure:
    self._running.add(asyncio.current_task())
    self.meter.enter()
    try:
      final = None
      async for out in self.engine.generate({"prompt_token_ids": ids}, params,
                                            f"datagen-{next(self._ids)}"):
        final = out  # outputs are cumulative: the last one holds the whole answer
    finally:
      self.meter.exit()
      self._running.discard(asyncio.current_task())
    return completion_result(final, max_tokens, keep_truncated)

  def close(self) -> None:
    """Resolves requests still in flight with a ChatFailure, shuts the engine down and stops
    the loop thread."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      tasks = list(self._tasks)
    for task in tasks:
      task.cancel()  # cancelling the generate() coroutine aborts the request in vLLM
    try:
      self._on_loop(self._shutdown_engine())
    finally:
      self._stop_loop()
    for task in tasks:
      self._resolve(task)

  async def _shutdown_engine(self) -> None:
    # Let the cancelled requests unwind (and abort in vLLM) before the engine goes away.
    if self._running:
      await asyncio.wait(set(self._running), timeout=5.0)
    for method in ("shutdown", "shutdown_background_loop"):  # v1 AsyncLLM, older engine
      fn = getattr(self.engine, method, None)
      if fn is not None:
        await _maybe_await(fn())
        return

  def _stop_loop(self) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join()
    self._loop.close()
