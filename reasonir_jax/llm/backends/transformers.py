"""`transformers` backend: a local Hugging Face causal LM with `generate`, on CPU or GPU.

For small runs and tests. Prompts use the tokenizer's chat template when it has one, else a
plain "System/User/Assistant" layout; `complete` tokenizes a raw prompt as it is (with the
tokenizer's own special tokens, as vLLM's `generate` does), no template. Batches are
left-padded. `json_schema` is not enforced (no constrained decoding here); answers are parsed and
validated by the pipelines as always. Frequency and presence penalties are applied exactly, by a
logits processor with OpenAI's / vLLM's definition (`generate` has only the multiplicative
`repetition_penalty`, a different knob). Stop strings end a sequence through a stopping
criterion, and the text is cut before the stop string, as vLLM and OpenAI return it.
"""
from __future__ import annotations

from typing import Any, Sequence

from reasonir_jax.llm.types import ChatBackend, ChatFailure, Message, SamplingParams, cut_at_stop


def penalty_processor(prompt_len: int, frequency: float, presence: float):
  """A logits processor subtracting `frequency * count + presence * (count > 0)` from each
  token's logit, counting the tokens generated after the first `prompt_len` (left-padded batches
  share that length). It runs before temperature and top-p, as in vLLM."""
  import torch
  import transformers

  class PenaltyProcessor(transformers.LogitsProcessor):
    def __call__(self, input_ids, scores):
      generated = input_ids[:, prompt_len:]
      if generated.shape[1] == 0:
        return scores
      counts = torch.zeros_like(scores).scatter_add_(
          1, generated, torch.ones(generated.shape, dtype=scores.dtype, device=scores.device))
      return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

  return PenaltyProcessor()


def stop_criterion(tokenizer, prompt_len: int, stop):
  """A stopping criterion that ends each sequence once its decoded new tokens (those after the
  first `prompt_len`) hold one of the `stop` strings; the caller cuts the text before it. Only a
  tail of each sequence is decoded per step (a stop string is found in the step it completes; a
  token decodes to at least a character or a byte fragment, so the tail covers it twice over)."""
  import torch
  import transformers
  tail = 8 + 2 * max(len(s) for s in stop)

  class StopStrings(transformers.StoppingCriteria):
    def __call__(self, input_ids, scores, **kwargs):
      start = max(prompt_len, input_ids.shape[1] - tail)
      texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
      return torch.tensor([any(s in t for s in stop) for t in texts], dtype=torch.bool,
                          device=input_ids.device)

  return StopStrings()


def plain_chat_format(messages: Sequence[Message]) -> str:
  """The fallback prompt for tokenizers without a chat template."""
  names = {"system": "System", "user": "User", "assistant": "Assistant"}
  lines = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
  return "\n\n".join(lines) + "\n\nAssistant:"


class TransformersBackend(ChatBackend):
  name = "transformers"
  raw_completion = True

  def __init__(self, model: str | Any, tokenizer: Any = None, device: str | None = None,
               dtype: str = "auto", batch_size: int = 8):
    """`model`: a local path (or hub id, if the hub is reachable) or a loaded model object;
    `tokenizer` defaults to the one saved with the model."""
    import torch
    import transformers
    self.torch = torch
    if device is None:
      device = "cuda" if torch.cuda.is_available() else "cpu"
    self.device = device
    if isinstance(model, str):
      self.model = model
      torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
      self.lm = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
      self.tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(model)
    else:
      self.lm = model
      self.model = getattr(getattr(model, "config", None), "_name_or_path", "") or "local-model"
      if tokenizer is None:
        raise ValueError("transformers backend: pass `tokenizer` with a model object")
      self.tokenizer = tokenizer
    if isinstance(self.tokenizer, str):
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer)
    self.lm.to(device).eval()
    if self.tokenizer.pad_token_id is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token
    self.batch_size = batch_size

  def format_prompt(self, messages: Sequence[Message]) -> str:
    if getattr(self.tokenizer, "chat_template", None):
      return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                add_generation_prompt=True)
    return plain_chat_format(messages)

  def chat(self, conversations: Sequence[Sequence[Message]], sampling: SamplingParams,
           json_schema: dict | None = None) -> list[str | ChatFailure]:
    del json_schema  # not enforced here
    prompts = [self.format_prompt(c) for c in conversations]
    # A chat template already starts with BOS; do not add a second one.
    return self._generate(prompts, sampling,
                          add_special=not getattr(self.tokenizer, "chat_template", None))

  def complete(self, prompts: Sequence[str], sampling: SamplingParams, *,
               keep_truncated: bool = False) -> list[str | ChatFailure]:
    del keep_truncated  # this backend returns a cut-off answer as its text on either path
    return self._generate(list(prompts), sampling, add_special=True)

  def _generate(self, prompts: list[str], sampling: SamplingParams,
                add_special: bool) -> list[str | ChatFailure]:
    torch = self.torch
    self.tokenizer.padding_side = "left"
    torch.manual_seed(sampling.seed)
    results: list[str | ChatFailure] = []
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      enc = self.tokenizer(chunk, return_tensors="pt", padding=True,
                           add_special_tokens=add_special).to(self.device)
      gen_kwargs = dict(max_new_tokens=sampling.max_tokens,
                        pad_token_id=self.tokenizer.pad_token_id)
      if sampling.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
      else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None)
      prompt_len = enc["input_ids"].shape[1]
      if sampling.penalties():
        import transformers
        gen_kwargs["logits_processor"] = transformers.LogitsProcessorList([penalty_processor(
            prompt_len, sampling.frequency_penalty, sampling.presence_penalty)])
      if sampling.stop:
        import transformers
        gen_kwargs["stopping_criteria"] = transformers.StoppingCriteriaList([stop_criterion(
            self.tokenizer, prompt_len, sampling.stop)])
      try:
        with torch.no_grad():
          out = self.lm.generate(**enc, **gen_kwargs)
      except (RuntimeError, ValueError) as e:
        results.extend(ChatFailure(f"generate failed: {e}") for _ in chunk)
        continue
      texts = self.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
      results.extend(cut_at_stop(t, sampling.stop) for t in texts)
    return results
