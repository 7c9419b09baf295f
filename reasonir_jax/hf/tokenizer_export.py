"""The exported tokenizer: one that adds what the template needs itself and has a pad token.

Our own tokenization (`PromptTokenizer`) tokenizes `prefix + text` as one string and lets a
tokenizer that adds BOS itself do so (else it puts BOS in front), so it never doubles BOS.
Plain users and sentence-transformers call the tokenizer with special tokens on; for them to see
our ids the tokenizer must add exactly what the template adds: one BOS in front for ReasonIR's
template (as Llama-3's does), nothing for ReasonIR's on a tokenizer without BOS (Qwen's), and
`<|endoftext|>` at the end for Qwen3-Embedding's. A tokenizer that does otherwise gets a
`TemplateProcessing` post-processor that does.
"""
from __future__ import annotations

import copy
from typing import Any

from reasonir_jax.tokenization import PAD_TOKEN, QWEN_EOS_TOKEN, adds_bos_only, adds_exactly

__all__ = ["adds_bos_only", "prepare_tokenizer"]


def _added(tokenizer, template: str) -> tuple[list[str], list[str]]:
  """(tokens in front, tokens at the end) the template needs the tokenizer to add."""
  if template == "qwen3_embedding":
    return [], [QWEN_EOS_TOKEN]
  return ([tokenizer.bos_token] if tokenizer.bos_token_id is not None else []), []


def _adds_exactly(tokenizer, front: list[str], back: list[str]) -> bool:
  ids = tokenizer.convert_tokens_to_ids
  return adds_exactly(tokenizer, [ids(t) for t in front], [ids(t) for t in back])


def prepare_tokenizer(tokenizer: Any, template: str = "reasonir"):
  """A copy of `tokenizer` (an object, a PromptTokenizer or a local directory) with a pad token
  that adds what `template` needs itself; raises if it cannot be made to."""
  from tokenizers import processors
  if isinstance(tokenizer, str):
    from reasonir_jax.tokenization import load_tokenizer
    tokenizer = load_tokenizer(tokenizer)
  if hasattr(tokenizer, "tokenizer") and not hasattr(tokenizer, "save_pretrained"):
    tokenizer = tokenizer.tokenizer  # a PromptTokenizer
  tokenizer = copy.deepcopy(tokenizer)
  if template == "qwen3_embedding" and QWEN_EOS_TOKEN not in tokenizer.get_vocab():
    raise ValueError(f"export: model.template='qwen3_embedding' needs {QWEN_EOS_TOKEN!r}, which "
                     f"the tokenizer does not have")
  if tokenizer.pad_token_id is None:
    for pad in (PAD_TOKEN, QWEN_EOS_TOKEN):
      if pad in tokenizer.get_vocab():
        tokenizer.pad_token = pad
        break
    else:
      tokenizer.pad_token = tokenizer.eos_token
  front, back = _added(tokenizer, template)
  if not _adds_exactly(tokenizer, front, back):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
      raise ValueError(f"export: {type(tokenizer).__name__} does not add {front + back} by itself "
                       f"and is not a fast tokenizer whose post-processor could be set")
    def seq(piece, type_id):
      return " ".join(f"{t}:{type_id}" for t in front + [piece] + back)
    backend.post_processor = processors.TemplateProcessing(
        single=seq("$A", 0), pair=f"{seq('$A', 0)} {seq('$B', 1)}",
        special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys(front + back)])
    if not _adds_exactly(tokenizer, front, back):
      raise ValueError(f"export: could not make {type(tokenizer).__name__} add {front + back} "
                       f"itself")
  return tokenizer
