"""The ReasonIR prompt template and its tokenization, with the exact prefix-token count.

Every text is `BOS + prefix + text`, where the prefix is `<|user|>\\n{instruction}\\n<|embed|>\\n`
(or `<|embed|>\\n` without an instruction; docs/reference.md section 1). The prefix and the text are
tokenized separately and concatenated, so the number of prefix tokens (what pooling masks out)
is exact, and truncation cuts the text while keeping the prefix.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

CHARS_PER_TOKEN_CAP = 10  # texts are cut to 10 x max_length characters before tokenizing
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"


def prompt_prefix(instruction: str | None) -> str:
  """The template text before the passage; an empty instruction means none (documents)."""
  if instruction:
    return f"<|user|>\n{instruction}\n<|embed|>\n"
  return "<|embed|>\n"


def format_prompt(text: str, instruction: str | None = None) -> str:
  """The full prompt without BOS (the tokenizer or `PromptTokenizer` adds it)."""
  return prompt_prefix(instruction) + text


def load_tokenizer(path: str):
  """A Hugging Face tokenizer from a local directory (no network)."""
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


class PromptTokenizer:
  """Tokenizes (instruction, text) pairs into BOS + prefix + text ids with the prefix length."""

  def __init__(self, tokenizer):
    if isinstance(tokenizer, str):
      tokenizer = load_tokenizer(tokenizer)
    self.tokenizer = tokenizer
    if tokenizer.bos_token_id is None:
      raise ValueError("tokenizer has no BOS token (bos_token_id is None); the template needs one")
    self.bos_id = int(tokenizer.bos_token_id)
    pad = tokenizer.pad_token_id
    self.pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)

  @functools.lru_cache(maxsize=4096)
  def prefix_ids(self, instruction: str | None) -> tuple[int, ...]:
    """BOS + the tokens of the template prefix; its length is what pooling masks out."""
    ids = self.tokenizer(prompt_prefix(instruction), add_special_tokens=False)["input_ids"]
    return (self.bos_id, *ids)

  def text_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens. Uses the Rust backend's `encode_batch_fast`
    (no character offsets: ~1.5x less CPU, the input pipeline's main cost) unless the backend
    has truncation or padding of its own configured; the ids are the same either way."""
    if not texts:
      return []
    backend = getattr(self.tokenizer, "backend_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None and backend.padding is None):
      return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

  def encode(self, texts: Sequence[str], instructions: str | None | Sequence[str | None],
             max_length: int) -> list[tuple[list[int], int] | None]:
    """Returns (ids, prefix_len) per text, or None where the prefix alone reaches max_length."""
    if instructions is None or isinstance(instructions, str):
      instructions = [instructions] * len(texts)
    if len(instructions) != len(texts):
      raise ValueError(f"{len(texts)} texts but {len(instructions)} instructions")
    cut = [t[: CHARS_PER_TOKEN_CAP * max_length] for t in texts]
    text_ids = self.text_ids(cut)
    out = []
    for ids, inst in zip(text_ids, instructions):
      prefix = self.prefix_ids(inst or None)
      if len(prefix) >= max_length:
        out.append(None)
        continue
      out.append((list(prefix) + ids[: max_length - len(prefix)], len(prefix)))
    return out


def bucket_length(length: int, buckets: Sequence[int], max_length: int) -> int:
  """The smallest bucket that holds `length`, capped at max_length."""
  for b in sorted(buckets):
    if b >= length:
      return min(b, max_length)
  return max_length


def pad_batch(encoded: Sequence[tuple[Sequence[int], int]], length: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Right-pads to `length`: input_ids, attention_mask (1 = token), pool_mask (1 = text token)."""
  n = len(encoded)
  input_ids = np.full((n, length), pad_id, dtype=np.int32)
  attention_mask = np.zeros((n, length), dtype=np.int32)
  pool_mask = np.zeros((n, length), dtype=np.int32)
  for i, (ids, prefix_len) in enumerate(encoded):
    k = min(len(ids), length)
    input_ids[i, :k] = ids[:k]
    attention_mask[i, :k] = 1
    pool_mask[i, prefix_len:k] = 1
  return {"input_ids": input_ids, "attention_mask": attention_mask, "pool_mask": pool_mask}


def train_tokenizer(texts, vocab_size: int, out_dir: str):
  """Trains a small byte-level BPE tokenizer with Llama-3's special token names (for tests and
  the offline quick start; real runs use the model directory's tokenizer)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                 pad_token=PAD_TOKEN)
  fast.save_pretrained(out_dir)
  return fast
