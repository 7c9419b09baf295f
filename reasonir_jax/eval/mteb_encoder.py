"""Our encoder behind MTEB's encoder interface, so any MTEB retrieval task runs on it.

    import mteb
    from reasonir_jax import Encoder
    from reasonir_jax.eval.mteb_encoder import MTEBEncoder

    model = MTEBEncoder(Encoder.from_pretrained("HF_DIR"), name="me/reasonir-jax")
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))

Queries get an instruction, documents none (the ReasonIR template). The query instruction comes,
in order, from `instructions[task name]`, the task's own prompt (`TaskMetadata.prompt`, a string
or its "query" entry), or `default_instruction`. Rows that carry their own instruction (MTEB's
instruction-retrieval tasks) arrive with it already appended to the query text by MTEB's loader.

`encode` follows the interface of mteb >= 2 (`inputs` a DataLoader of batches with a "text"
list; keyword `task_metadata`, `hf_split`, `hf_subset`, `prompt_type`) and also accepts a plain
list of strings with `task_name=` (mteb 1.x). mteb itself is optional: only `mteb_model_meta`
imports it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

DEFAULT_QUERY_INSTRUCTION = "Given a query, retrieve relevant passages that answer the query"


def _prompt_type_name(prompt_type) -> str | None:
  if prompt_type is None:
    return None
  return str(getattr(prompt_type, "value", prompt_type))


def _texts(inputs) -> list[str]:
  if isinstance(inputs, str):
    raise TypeError("MTEBEncoder.encode: pass a list of texts or an MTEB DataLoader, not one string")
  items = list(inputs)
  if all(isinstance(x, str) for x in items):
    return items
  texts = []
  for batch in items:
    if not isinstance(batch, Mapping) or "text" not in batch:
      raise TypeError(f"MTEBEncoder.encode: batches need a 'text' field (got {type(batch).__name__})")
    texts.extend(str(t) for t in batch["text"])
  return texts


class MTEBEncoder:
  """Adapts `Encoder.encode` to MTEB; embeddings are L2-normalised, so similarity is cosine."""

  def __init__(self, encoder, *, name: str = "reasonir-jax/encoder", revision: str = "local",
               instructions: Mapping[str, str] | None = None,
               default_instruction: str = DEFAULT_QUERY_INSTRUCTION, batch_size: int = 32,
               max_length: int = 2048):
    self.encoder, self.name, self.revision = encoder, name, revision
    self.instructions = dict(instructions or {})
    self.default_instruction = default_instruction
    self.batch_size, self.max_length = batch_size, max_length
    self._meta = None

  def query_instruction(self, task_metadata=None, task_name: str | None = None) -> str:
    name = task_name or getattr(task_metadata, "name", None)
    if name in self.instructions:
      return self.instructions[name]
    prompt = getattr(task_metadata, "prompt", None)
    if isinstance(prompt, Mapping):
      prompt = prompt.get("query")
    return prompt or self.default_instruction

  def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
             prompt_type=None, task_name: str | None = None, **kwargs: Any) -> np.ndarray:
    del hf_split, hf_subset
    texts = _texts(inputs)
    is_query = _prompt_type_name(prompt_type) == "query"
    instruction = self.query_instruction(task_metadata, task_name) if is_query else None
    batch_size = int(kwargs.get("batch_size") or self.batch_size)
    emb = self.encoder.encode(texts, instruction=instruction, batch_size=batch_size,
                              max_length=self.max_length, show_progress=False)
    return np.asarray(emb, dtype=np.float32)

  def similarity(self, embeddings1, embeddings2):
    import torch
    a, b = np.atleast_2d(np.asarray(embeddings1, np.float32)), np.atleast_2d(np.asarray(embeddings2, np.float32))
    return torch.from_numpy(a @ b.T)

  def similarity_pairwise(self, embeddings1, embeddings2):
    import torch
    a, b = np.asarray(embeddings1, np.float32), np.asarray(embeddings2, np.float32)
    return torch.from_numpy((a * b).sum(-1))

  @property
  def mteb_model_meta(self):
    if self._meta is None:
      from mteb.models.model_meta import ModelMeta, ScoringFunction
      cfg = getattr(self.encoder, "model_cfg", None)
      self._meta = ModelMeta(
          loader=None, name=self.name, revision=self.revision, release_date=None, languages=None,
          n_parameters=None, memory_usage_mb=None, max_tokens=self.max_length,
          embed_dim=getattr(cfg, "hidden_size", None), license=None, open_weights=True,
          public_training_code=None, public_training_data=None, framework=[],
          similarity_fn_name=ScoringFunction.COSINE, use_instructions=True, training_datasets=None)
    return self._meta
