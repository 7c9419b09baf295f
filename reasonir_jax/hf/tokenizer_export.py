"""The exported tokenizer: one that adds BOS itself and has a pad token.

Our own tokenization (`PromptTokenizer`) tokenizes `prefix + text` as one string and lets a
tokenizer that adds BOS itself do so (else it puts BOS in front), so it never doubles BOS.
Plain users and sentence-transformers call the tokenizer with special tokens on; for them to see
`BOS + prompt + text` the tokenizer must add exactly one BOS (and nothing else), as Llama-3's
does. A tokenizer that adds nothing gets a `TemplateProcessing` post-processor that does.
"""
from __future__ import annotations

import copy
from typing import Any

from reasonir_jax.tokenization import PAD_TOKEN, adds_bos_only

__all__ = ["adds_bos_only", "prepare_tokenizer"]


def prepare_tokenizer(tokenizer: Any):
  """A copy of `tokenizer` (an object, a PromptTokenizer or a local directory) with a pad token
  that adds exactly one BOS itself; raises if it cannot be made to."""
  from tokenizers import processors
  if isinstance(tokenizer, str):
    from reasonir_jax.tokenization import load_tokenizer
    tokenizer = load_tokenizer(tokenizer)
  if hasattr(tokenizer, "tokenizer") and not hasattr(tokenizer, "save_pretrained"):
    tokenizer = tokenizer.tokenizer  # a PromptTokenizer
  tokenizer = copy.deepcopy(tokenizer)
  if tokenizer.bos_token_id is None:
    raise ValueError("export: the tokenizer has no BOS token; the prompt template needs one")
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in tokenizer.get_vocab() else tokenizer.eos_token
  if not adds_bos_only(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
      raise ValueError(f"export: {type(tokenizer).__name__} does not add BOS by itself and is not "
                       f"a fast tokenizer whose post-processor could be set")
    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tokenizer.bos_token_id)])
    if not adds_bos_only(tokenizer):
      raise ValueError(f"export: could not make {type(tokenizer).__name__} add BOS itself")
  return tokenizer
