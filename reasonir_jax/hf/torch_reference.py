"""An explicit PyTorch reference encoder (torch + transformers only, no JAX) for tests and
benchmarks: ReasonIR's recipe (`encode`) and Qwen3-Embedding's (`encode_last_token`).

It works on any transformers LlamaModel, also one whose config is causal (a model built in a
test, a checkpoint exported before `"is_causal": false` was written): it clears `is_causal` on
every module AND passes a ready-made 4-D key-padding mask, because with no padding the mask
builder returns no mask at all and SDPA falls back to each module's `is_causal=True`. Users of an
export need none of this: plain `AutoModel` or `SentenceTransformer` (docs/hf_usage.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def make_bidirectional(model: torch.nn.Module) -> torch.nn.Module:
  """Turns off causal attention in every layer of a transformers LlamaModel (in place)."""
  for module in model.modules():
    if hasattr(module, "is_causal"):
      module.is_causal = False
  return model


def key_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
  """[b, l] 1/0 mask -> [b, 1, l, l] additive mask: every token sees every real token."""
  b, l = attention_mask.shape
  keep = attention_mask[:, None, None, :].bool().expand(b, 1, l, l)
  mask = torch.zeros((b, 1, l, l), dtype=dtype)
  return mask.masked_fill(~keep, torch.finfo(dtype).min)


def prompt_prefix(instruction: str | None) -> str:
  instruction = (instruction or "").strip("\t\n :")  # as GritLM: empty -> document template
  return f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n"


@torch.no_grad()
def encode(model, tokenizer, texts: list[str], instruction: str | None = None,
           max_length: int = 2048) -> torch.Tensor:
  """[len(texts), hidden] float32 L2-normalised ReasonIR embeddings."""
  # As GritLM's collator: the BOS token's text, the prefix and the text are tokenized as one
  # string with no special tokens added (so exactly one BOS, whatever the tokenizer adds), and
  # the mean leaves out as many leading tokens as BOS + prefix have alone.
  prefix = (tokenizer.bos_token or "") + prompt_prefix(instruction)  # Qwen's tokenizers: no BOS
  skip = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
  rows = [tokenizer(prefix + text[: 10 * max_length], add_special_tokens=False)["input_ids"]
          [:max_length] for text in texts]
  length = max(len(r) for r in rows)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
  attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
  for i, r in enumerate(rows):  # right padding; position ids are 0..l-1
    input_ids[i, : len(r)] = torch.tensor(r)
    attention_mask[i, : len(r)] = 1
  pool_mask = attention_mask.clone()
  pool_mask[:, :skip] = 0  # BOS and the instruction prefix are not pooled

  dtype = next(model.parameters()).dtype
  hidden = model(input_ids=input_ids, attention_mask=key_padding_mask(attention_mask, dtype)
                 ).last_hidden_state.float()
  summed = (hidden * pool_mask[..., None].float()).sum(dim=1)
  mean = summed / pool_mask.sum(dim=1, keepdim=True).clamp(min=1).float()
  return F.normalize(mean, dim=-1)


@torch.no_grad()
def encode_last_token(model, tokenizer, texts: list[str], instruction: str | None = None,
                      max_length: int = 2048) -> torch.Tensor:
  """[len(texts), hidden] float32 L2-normalised Qwen3-Embedding embeddings, as its model card
  computes them: queries `Instruct: {instruction}\\nQuery:{text}`, documents plain, at most
  max_length - 1 tokens then `<|endoftext|>`, left padding, the model's own causal attention,
  the last token's state."""
  prefix = f"Instruct: {instruction}\nQuery:" if instruction else ""
  eod = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  rows = [tokenizer(prefix + text[: 10 * max_length], add_special_tokens=False)["input_ids"]
          [: max_length - 1] + [eod] for text in texts]
  length = max(len(r) for r in rows)
  input_ids = torch.full((len(rows), length), eod, dtype=torch.long)
  attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
  for i, r in enumerate(rows):
    input_ids[i, length - len(r):] = torch.tensor(r)
    attention_mask[i, length - len(r):] = 1
  hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
  return F.normalize(hidden[:, -1], dim=-1)
