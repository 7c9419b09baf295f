"""The sentence-transformers files of an export: `SentenceTransformer(dir)` then embeds as we do.

modules.json chains the Transformer (this directory), Pooling and Normalize. ReasonIR's recipe
pools the mean leaving the prompt out (BOS + template prefix: sentence-transformers counts the
prompt's tokens with special tokens on, so the tokenizer must add BOS itself where it has one);
Qwen3-Embedding's pools the last token (the EOS the tokenizer appends). config_sentence_transformers.json
holds the prompts: "document" (the default: `<|embed|>\\n`, or nothing for Qwen3-Embedding) and
one per instruction given at export. The files use the long-standing layout, which
sentence-transformers 2.4 to 6 read.
"""
from __future__ import annotations

import json
import os

from reasonir_jax import paths
from reasonir_jax.tokenization import INSTRUCTION_STRIP, clean_instruction, template_prefix

DOCUMENT_PROMPT = "document"
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def prompts_for(instructions: dict[str, str], template: str = "reasonir") -> dict[str, str]:
  """Prompt name -> the text placed before each input (no BOS: the tokenizer adds it); each
  instruction stripped as our tokenization strips it."""
  prompts = {DOCUMENT_PROMPT: template_prefix(template, None)}
  for name, instruction in instructions.items():
    if name == DOCUMENT_PROMPT or not clean_instruction(instruction):
      raise ValueError(f"export prompt {name!r}: needs an instruction that is not empty once "
                       f"stripped of {INSTRUCTION_STRIP!r}, and a name other than "
                       f"{DOCUMENT_PROMPT!r}")
    prompts[name] = template_prefix(template, instruction)
  return prompts


def files(hidden_size: int, instructions: dict[str, str], max_length: int,
          template: str = "reasonir", pooling: str = "mean") -> dict[str, dict]:
  """Relative path -> JSON payload."""
  last = pooling == "last_token"
  return {
      "modules.json": MODULES,
      "sentence_bert_config.json": {"max_seq_length": int(max_length), "do_lower_case": False},
      "1_Pooling/config.json": {
          "word_embedding_dimension": int(hidden_size), "pooling_mode_cls_token": False,
          "pooling_mode_mean_tokens": not last, "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
          "pooling_mode_lasttoken": last, "include_prompt": last},
      "2_Normalize/config.json": {},
      "config_sentence_transformers.json": {
          "prompts": prompts_for(instructions, template), "default_prompt_name": DOCUMENT_PROMPT,
          "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"},
  }


def write(out_dir: str, hidden_size: int, instructions: dict[str, str], max_length: int,
          template: str = "reasonir", pooling: str = "mean") -> None:
  for rel, payload in files(hidden_size, instructions, max_length, template, pooling).items():
    folder = os.path.dirname(rel)
    if folder:
      paths.makedirs(paths.join(out_dir, folder))
    paths.write_text(paths.join(out_dir, rel), json.dumps(payload, indent=2))
