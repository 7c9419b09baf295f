"""The prompt templates and their tokenization, with the pooled tokens of each text.

Two templates (`ModelConfig.template`):

  reasonir          `BOS + prefix + text`, the prefix `<|user|>\\n{instruction}\\n<|embed|>\\n` (or
                    `<|embed|>\\n` without an instruction; docs/reference.md section 1); no BOS when
                    the tokenizer has none (Qwen's). Instructions are stripped of "\\t\\n :" at both
                    ends, and one that is then empty gives the document template (GritLM's collator).
  qwen3_embedding   Qwen3-Embedding's: queries `Instruct: {instruction}\\nQuery:{text}`, documents
                    the plain text, `<|endoftext|>` appended to both, no BOS.

As in GritLM (its training collator and `encode`) and sentence-transformers, the whole string is
tokenized at once, and the number of tokens left out of the mean is the length of `BOS + prefix`
tokenized alone. The two differ from tokenizing prefix and text apart where the text's first
characters merge with the prefix's final newline (a text that begins with a newline, with the
Llama-3 tokenizer). Truncation cuts the text, never the prefix or the appended EOS.

Pooling (`ModelConfig.pooling`) is expressed in the pooled tokens each text gets, so the model's
pooling is one masked mean either way: "mean" pools the tokens after the prefix, "last_token" the
last token alone (the mean of one token is that token's state, exactly).

Which tokenizer a run uses is decided here too (`resolve_tokenizer`), for the trainer and the
input pipeline alike.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

CHARS_PER_TOKEN_CAP = 10  # texts are cut to 10 x max_length characters before tokenizing
INSTRUCTION_STRIP = "\t\n :"  # stripped from both ends of an instruction (GritLM's collator)
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"
QWEN_EOS_TOKEN = "<|endoftext|>"  # what Qwen3-Embedding appends to every text (and pads with)
TEMPLATES = ("reasonir", "qwen3_embedding")
POOLINGS = ("mean", "last_token")
_PROBE = "probe text"


def clean_instruction(instruction: str | None) -> str | None:
  """The instruction stripped of "\\t\\n :" at both ends; None when nothing is left."""
  return (instruction or "").strip(INSTRUCTION_STRIP) or None


def prompt_prefix(instruction: str | None) -> str:
  """The template text before the passage; an instruction that strips to nothing means none."""
  instruction = clean_instruction(instruction)
  if instruction:
    return f"<|user|>\n{instruction}\n<|embed|>\n"
  return "<|embed|>\n"


def qwen3_prefix(instruction: str | None) -> str:
  """Qwen3-Embedding's query prefix; documents (no instruction) get none."""
  return f"Instruct: {instruction}\nQuery:" if instruction else ""


def template_prefix(template: str, instruction: str | None) -> str:
  """The text `template` places before a passage."""
  if template == "reasonir":
    return prompt_prefix(instruction)
  if template == "qwen3_embedding":
    return qwen3_prefix(instruction)
  raise ValueError(f"model.template={template!r} is not one of {TEMPLATES}")


def format_prompt(text: str, instruction: str | None = None) -> str:
  """The full prompt without BOS (the tokenizer or `PromptTokenizer` adds it)."""
  return prompt_prefix(instruction) + text


def load_tokenizer(path: str):
  """A Hugging Face tokenizer from a local directory (no network)."""
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def has_tokenizer(path: str) -> bool:
  """Whether the directory `path` (local or remote) holds a Hugging Face tokenizer."""
  from reasonir_jax import paths  # pylint: disable=import-outside-toplevel
  return any(paths.exists(paths.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def resolve_tokenizer(tokenizer: str = "", init_from: str = "") -> str:
  """The tokenizer directory of a run: `tokenizer` (config.data.tokenizer), else the one of the
  model directory `init_from`, else the shipped sample one. Always a local path: transformers
  reads local folders, so a remote tokenizer is copied to a temporary folder first."""
  if not tokenizer and init_from and has_tokenizer(init_from):
    tokenizer = init_from
  if not tokenizer:
    from reasonir_jax.data.sample import sample_tokenizer_dir  # pylint: disable=import-outside-toplevel
    return sample_tokenizer_dir()
  from reasonir_jax import paths  # pylint: disable=import-outside-toplevel
  if not paths.is_remote(tokenizer):
    return tokenizer
  from reasonir_jax.hf.load import local_tokenizer_dir  # pylint: disable=import-outside-toplevel
  return local_tokenizer_dir(tokenizer)


def adds_exactly(tokenizer, front: list[int], back: list[int]) -> bool:
  """Whether tokenizing with special tokens gives exactly front + the plain ids + back."""
  plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
  return tokenizer(_PROBE)["input_ids"] == front + plain + back


def adds_bos_only(tokenizer) -> bool:
  """Whether tokenizing with special tokens gives exactly BOS + the plain ids (Llama-3's way)."""
  return adds_exactly(tokenizer, [tokenizer.bos_token_id], [])


class PromptTokenizer:
  """Tokenizes (instruction, text) pairs into the ids of a template's prompt and the index of
  the first pooled token (see the module docstring)."""

  def __init__(self, tokenizer, template: str = "reasonir", pooling: str = "mean"):
    if isinstance(tokenizer, str):
      tokenizer = load_tokenizer(tokenizer)
    if template not in TEMPLATES:
      raise ValueError(f"model.template={template!r} is not one of {TEMPLATES}")
    if pooling not in POOLINGS:
      raise ValueError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
    self.tokenizer = tokenizer
    self.template = template
    self.pooling = pooling
    # BOS for the ReasonIR template when the tokenizer has one; Qwen3-Embedding uses none.
    bos = tokenizer.bos_token_id if template == "reasonir" else None
    self.bos_id = None if bos is None else int(bos)
    self.eos_id = None
    if template == "qwen3_embedding":
      eos = tokenizer.convert_tokens_to_ids(QWEN_EOS_TOKEN)
      if eos is None or eos == tokenizer.unk_token_id:
        raise ValueError(f"model.template='qwen3_embedding' appends {QWEN_EOS_TOKEN!r}, which "
                         f"the tokenizer does not have")
      self.eos_id = int(eos)
    pad = tokenizer.pad_token_id
    self.pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)
    # A tokenizer that adds BOS itself (and nothing else) does so; for any other, BOS is put in
    # front of the ids. Never BOS in the string as well as from the tokenizer (two BOS tokens).
    self.adds_bos = self.bos_id is not None and adds_bos_only(tokenizer)

  def _ids(self, strings: Sequence[str]) -> list[list[int]]:
    """BOS + the ids of each string, in one batched call. Uses the Rust backend's
    `encode_batch_fast` (no character offsets: ~1.5x less CPU, the input pipeline's main cost)
    unless the backend has truncation or padding of its own configured; the ids are the same."""
    if not strings:
      return []
    backend = getattr(self.tokenizer, "backend_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch_fast")
        and backend.truncation is None and backend.padding is None):
      ids = [e.ids for e in backend.encode_batch_fast(list(strings),
                                                      add_special_tokens=self.adds_bos)]
    else:
      ids = self.tokenizer(list(strings), add_special_tokens=self.adds_bos)["input_ids"]
    if self.bos_id is not None and not self.adds_bos:
      ids = [[self.bos_id, *x] for x in ids]
    return ids

  @functools.lru_cache(maxsize=4096)
  def prefix_ids(self, instruction: str | None) -> tuple[int, ...]:
    """`BOS + prefix` tokenized alone; its length is how many leading tokens pooling masks out."""
    return tuple(self._ids([template_prefix(self.template, instruction)])[0])

  def reserved(self, instruction: str | None) -> int:
    """Tokens of a prompt that are not text: BOS + prefix, and the appended EOS."""
    return len(self.prefix_ids(instruction)) + (self.eos_id is not None)

  def full_ids(self, texts: Sequence[str], instructions: str | None | Sequence[str | None],
               max_chars: int | None = None) -> list[list[int]]:
    """The untruncated ids of `BOS + prefix + text (+ EOS)` per text (each text first cut to
    max_chars characters when given), tokenized as one string."""
    instructions = _per_text(instructions, len(texts))
    cut = texts if max_chars is None else [t[:max_chars] for t in texts]
    ids = self._ids([template_prefix(self.template, i) + t for i, t in zip(instructions, cut)])
    return ids if self.eos_id is None else [x + [self.eos_id] for x in ids]

  def encode(self, texts: Sequence[str], instructions: str | None | Sequence[str | None],
             max_length: int) -> list[tuple[list[int], int] | None]:
    """(ids, first pooled index) per text, the ids cut to max_length tokens (the text is cut,
    the prefix and an appended EOS kept), or None where those alone reach max_length. Texts are
    first cut to 10 x max_length characters."""
    instructions = _per_text(instructions, len(texts))
    prefix_lens = [len(self.prefix_ids(i)) for i in instructions]
    keep = [i for i, inst in enumerate(instructions) if self.reserved(inst) < max_length]
    full = self.full_ids([texts[i] for i in keep], [instructions[i] for i in keep],
                         CHARS_PER_TOKEN_CAP * max_length)
    out: list[tuple[list[int], int] | None] = [None] * len(texts)
    for i, ids in zip(keep, full):
      out[i] = self.cut((ids, prefix_lens[i]), max_length)
    return out

  def cut(self, encoded: tuple[list[int], int], length: int) -> tuple[list[int], int]:
    """One (ids, prefix_len) cut to at most `length` tokens, as (ids, first pooled index): an
    appended EOS stays last, and last-token pooling pools the last token kept."""
    ids, prefix_len = encoded
    if len(ids) > length:
      ids = ids[:length] if self.eos_id is None else ids[:length - 1] + ids[-1:]
    return (ids, len(ids) - 1) if self.pooling == "last_token" else (ids, prefix_len)


def _per_text(instructions, n: int) -> list[str | None]:
  if instructions is None or isinstance(instructions, str):
    return [instructions] * n
  instructions = list(instructions)
  if len(instructions) != n:
    raise ValueError(f"{n} texts but {len(instructions)} instructions")
  return instructions


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
