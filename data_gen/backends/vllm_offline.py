"""`vllm` backend: offline batch generation with vLLM (GPU machines only).

`LLM(model, tensor_parallel_size=...)` loads once; `chat` sends all conversations of a call to
`llm.chat` at once, so vLLM batches them. Structured JSON output is requested by feature
detection: `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))` in recent
vLLM, `SamplingParams(guided_decoding=GuidedDecodingParams(json=schema))` in older releases,
none if neither exists (answers are still parsed and validated).

vLLM is imported only when this backend is built; the module can be injected (`vllm_module`)
so that request building is tested without vLLM or a GPU.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from data_gen.backends.base import ChatBackend, ChatFailure, Message, SamplingParams

log = logging.getLogger(__name__)

INSTALL_HINT = ("the vllm backend needs vLLM on a GPU machine: pip install 'reasonir-jax[datagen]' "
                "(or pip install vllm); or use --backend openai against a `vllm serve` endpoint")


def import_vllm():
  try:
    import vllm
  except ImportError as e:
    raise ImportError(f"{INSTALL_HINT} ({e})") from e
  return vllm


class VLLMBackend(ChatBackend):
  name = "vllm"

  def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
               gpu_memory_utilization: float = 0.9, dtype: str = "auto", seed: int = 0,
               structured_output: bool = True, vllm_module: Any = None, **llm_kwargs):
    self.vllm = vllm_module if vllm_module is not None else import_vllm()
    self.model = model
    self.structured_output = structured_output
    kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                  gpu_memory_utilization=gpu_memory_utilization, seed=seed, **llm_kwargs)
    if max_model_len is not None:
      kwargs["max_model_len"] = max_model_len
    self.llm = self.vllm.LLM(**kwargs)

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
    return self.vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                    max_tokens=sampling.max_tokens, seed=sampling.seed,
                                    **self._structured_kwargs(json_schema))

  def _generate(self, conversations, params) -> list[str | ChatFailure]:
    outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=True)
    results: list[str | ChatFailure] = []
    for out in outputs:
      if not out.outputs:
        results.append(ChatFailure("vLLM returned no completion"))
      else:
        results.append(out.outputs[0].text)
    return results

  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    if not conversations:
      return []
    params = self.build_sampling_params(sampling, json_schema)
    try:
      return self._generate(conversations, params)
    except (ValueError, RuntimeError) as e:
      if len(conversations) == 1:
        return [ChatFailure(f"vLLM error: {e}")]
      # One bad request (e.g. a prompt longer than max_model_len) fails the whole call: redo
      # the conversations one by one so only that one becomes a failure.
      log.warning("vLLM batch failed (%s); retrying %d conversations one by one", e,
                  len(conversations))
      results = []
      for conv in conversations:
        try:
          results.extend(self._generate([conv], params))
        except (ValueError, RuntimeError) as e1:
          results.append(ChatFailure(f"vLLM error: {e1}"))
      return results
