"""`vllm` backend: offline batch generation with vLLM (GPU machines only).

`LLM(model, tensor_parallel_size=...)` loads once; `chat` sends all conversations of a call to
`llm.chat` at once, so vLLM batches them. Structured JSON output is requested by feature
detection: `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))` in recent
vLLM, `SamplingParams(guided_decoding=GuidedDecodingParams(json=schema))` in older releases,
none if neither exists (answers are still parsed and validated).

Before a call, every conversation is tokenized with the model's chat template and checked
against `max_model_len`: one whose prompt plus `max_tokens` does not fit is answered with a
ChatFailure of kind "prompt_too_long" and never sent, so one over-long prompt cannot fail (and
force a rerun of) the whole batch. An answer that stopped at the token limit
(`finish_reason="length"`) is a ChatFailure of kind "length" (with the text so far), not bad
JSON. Stop strings go to vLLM's SamplingParams `stop`.

`complete` sends raw prompt strings through `llm.generate` (no chat template), with the same
length check (the string tokenized as `generate` tokenizes it) and failure handling.

vLLM is imported only when this backend is built; the module can be injected (`vllm_module`)
so that request building is tested without vLLM or a GPU.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from reasonir_jax.llm.types import ChatBackend, ChatFailure, Message, SamplingParams

log = logging.getLogger(__name__)

INSTALL_HINT = ("the vllm backend needs vLLM on a GPU machine: pip install 'reasonir-jax[datagen]' "
                "(or pip install vllm); or use --backend openai against a `vllm serve` endpoint")


def import_vllm():
  try:
    import vllm
  except ImportError as e:
    raise ImportError(f"{INSTALL_HINT} ({e})") from e
  return vllm


def engine_kwargs(model, tensor_parallel_size, max_model_len, gpu_memory_utilization, dtype,
                  seed, extra: dict) -> dict:
  """The engine arguments both vLLM backends pass (`LLM(...)`, `AsyncEngineArgs(...)`); a
  max_model_len of None leaves vLLM's own (the model's) default."""
  kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization, seed=seed, **extra)
  if max_model_len is not None:
    kwargs["max_model_len"] = max_model_len
  return kwargs


def chat_prompt_ids(tokenizer, conversation: Sequence[Message]) -> list[int]:
  """The prompt's token ids under the model's chat template, as vLLM's chat() builds it."""
  ids = tokenizer.apply_chat_template(list(conversation), tokenize=True,
                                      add_generation_prompt=True)
  if hasattr(ids, "keys"):  # a BatchEncoding (transformers >= 5 may return one)
    ids = ids["input_ids"]
  return list(ids)


def completion_result(out, max_tokens, keep_truncated: bool = False) -> str | ChatFailure:
  """One vLLM RequestOutput (or None) -> the answer text or its ChatFailure: none produced, or
  cut off at max_tokens (kind "length", unless `keep_truncated`)."""
  if out is None or not out.outputs:
    return ChatFailure("vLLM returned no completion")
  completion = out.outputs[0]
  if getattr(completion, "finish_reason", None) == "length" and not keep_truncated:
    return ChatFailure(f"answer cut off at max_tokens={max_tokens} (finish_reason=length)",
                       kind="length", text=completion.text)
  return completion.text


class VLLMBackend(ChatBackend):
  name = "vllm"
  raw_completion = True

  def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
               gpu_memory_utilization: float = 0.9, dtype: str = "auto", seed: int = 0,
               structured_output: bool = True, vllm_module: Any = None, **llm_kwargs):
    self.vllm = vllm_module if vllm_module is not None else import_vllm()
    self.model = model
    self.structured_output = structured_output
    self.llm = self.vllm.LLM(**engine_kwargs(model, tensor_parallel_size, max_model_len,
                                             gpu_memory_utilization, dtype, seed, llm_kwargs))
    self.max_model_len = max_model_len or self._engine_max_model_len()
    if self.max_model_len is None:
      log.warning("vllm: max_model_len unknown; prompts are not length-checked before sending")

  def _engine_max_model_len(self) -> int | None:
    engine = getattr(self.llm, "llm_engine", None)
    value = getattr(getattr(engine, "model_config", None), "max_model_len", None)
    return int(value) if value else None

  def prompt_tokens(self, conversation: Sequence[Message]) -> int:
    """Prompt length in tokens, as vLLM's chat() would build it (the chat template)."""
    return len(chat_prompt_ids(self.llm.get_tokenizer(), conversation))

  def too_long(self, prompt: Sequence[Message] | str, max_tokens: int,
               raw: bool = False) -> ChatFailure | None:
    """The "prompt_too_long" failure of a conversation (a raw prompt string with `raw`), or None
    when it fits or max_model_len is unknown (then nothing is tokenized)."""
    if self.max_model_len is None:
      return None
    n = self.raw_prompt_tokens(prompt) if raw else self.prompt_tokens(prompt)
    return self._over_limit(n, max_tokens)

  def _over_limit(self, n: int, max_tokens: int) -> ChatFailure | None:
    if self.max_model_len is not None and n + max_tokens > self.max_model_len:
      return ChatFailure(f"prompt has {n} tokens; with max_tokens={max_tokens} it exceeds "
                         f"max_model_len={self.max_model_len}", kind="prompt_too_long")
    return None

  def _structured_kwargs(self, json_schema: dict | None) -> dict:
    if json_schema is None or not self.structured_output:
      return {}
    sp_module = getattr(self.vllm, "sampling_params", None)
    new = getattr(sp_module, "StructuredOutputsParams", None)
    if new is not None:
      return {"structured_outputs": new(json=json_schema)}
    old = getattr(sp_module, "GuidedDecodingParams", None)
    if old is not None:
      return {"guided_decoding": old(json=json_schema)}
    log.warning("this vLLM has no structured-output parameters; generating unconstrained JSON")
    return {}

  def build_sampling_params(self, sampling: SamplingParams, json_schema: dict | None):
    # vLLM ends the answer at a stop string and leaves it out of the text, as OpenAI does.
    stop = {"stop": list(sampling.stop)} if sampling.stop else {}
    return self.vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                    max_tokens=sampling.max_tokens, seed=sampling.seed,
                                    **sampling.penalties(), **stop,
                                    **self._structured_kwargs(json_schema))

  def _generate(self, conversations, params, raw: bool = False,
                keep_truncated: bool = False) -> list[str | ChatFailure]:
    if raw:  # `conversations` are prompt strings
      outputs = self.llm.generate(list(conversations), params, use_tqdm=True)
    else:
      outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=True)
    max_tokens = getattr(params, "max_tokens", "?")
    return [completion_result(out, max_tokens, keep_truncated) for out in outputs]

  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    return self._checked_generate(conversations, sampling,
                                  self.build_sampling_params(sampling, json_schema))

  def _checked_generate(self, prompts, sampling: SamplingParams, params, raw: bool = False,
                        keep_truncated: bool = False) -> list[str | ChatFailure]:
    """Answers in order: a prompt that does not fit max_model_len gets its failure and is never
    sent; the rest go to vLLM in one call (bisected on a failed call)."""
    results: list[str | ChatFailure | None] = [self.too_long(p, sampling.max_tokens, raw)
                                               for p in prompts]
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
      answers = self._generate_isolated([prompts[i] for i in todo], params, raw=raw,
                                        keep_truncated=keep_truncated)
      for i, answer in zip(todo, answers):
        results[i] = answer
    return results

  def _generate_isolated(self, conversations, params, **kw) -> list[str | ChatFailure]:
    """One llm.chat call (llm.generate with `raw`); if vLLM rejects the call as a whole (a
    request it cannot take that the length check did not catch), bisect, so k bad requests cost
    O(k log n) calls."""
    try:
      return self._generate(conversations, params, **kw)
    except (ValueError, RuntimeError) as e:
      if len(conversations) == 1:
        return [ChatFailure(f"vLLM error: {e}")]
      log.warning("vLLM call over %d conversations failed (%s); splitting it", len(conversations),
                  e)
      half = len(conversations) // 2
      return (self._generate_isolated(conversations[:half], params, **kw) +
              self._generate_isolated(conversations[half:], params, **kw))

  # --- raw prompts (no chat template) -----------------------------------------------------------
  def raw_prompt_tokens(self, prompt: str) -> int:
    """Prompt length in tokens as vLLM's generate() tokenizes a string: the tokenizer's own
    special tokens (e.g. BOS), no chat template."""
    return len(self.llm.get_tokenizer().encode(prompt))

  def complete(self, prompts: Sequence[str], sampling: SamplingParams, *,
               keep_truncated: bool = False) -> list[str | ChatFailure]:
    return self._checked_generate(prompts, sampling, self.build_sampling_params(sampling, None),
                                  raw=True, keep_truncated=keep_truncated)

  def close(self) -> None:
    """Stops vLLM's engine-core process now (`LLM` has no close of its own; otherwise it lives,
    holding its memory, until the interpreter exits). Safe to call twice."""
    core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if shutdown is not None:
      shutdown()
