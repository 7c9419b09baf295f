"""Fixtures of the evaluation tests: a tiny BRIGHT-layout dataset, a tiny random HF model, and a
deterministic bag-of-words encoder (for cache/retrieval logic without a model)."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

BIOLOGY_DOCS = {
    "bio_mito": "Mitochondria produce ATP through cellular respiration in the cell.",
    "bio_photo": "Photosynthesis in plants converts light energy into glucose.",
    "bio_dna": "DNA replication copies the genome before the cell divides.",
    "bio_enzyme": "Enzymes lower the activation energy of chemical reactions.",
    "bio_neuron": "Neurons transmit signals with action potentials along the axon.",
    "bio_dup": "Mitochondria ATP respiration energy cell powerhouse.",
}
BIOLOGY_EXAMPLES = [
    {"id": "b0", "query": "Why do cells need mitochondria to make ATP energy?", "reasoning": "",
     "gold_ids": ["bio_mito"], "gold_ids_long": ["bio_mito"], "excluded_ids": ["bio_dup"]},
    {"id": "b1", "query": "How do plants turn light into glucose?", "reasoning": "",
     "gold_ids": ["bio_photo"], "gold_ids_long": ["bio_photo"], "excluded_ids": ["N/A"]},
    {"id": "b2", "query": "What copies DNA before a cell divides?", "reasoning": "",
     "gold_ids": ["bio_dna", "bio_enzyme"], "gold_ids_long": ["bio_dna"], "excluded_ids": []},
]
LEETCODE_DOCS = {
    "lc_bsearch": "Binary search halves the sorted interval each step in logarithmic time.",
    "lc_dp": "Dynamic programming stores answers of overlapping subproblems.",
    "lc_graph": "Breadth first search finds shortest paths in unweighted graphs.",
    "lc_sort": "Merge sort splits the array and merges sorted halves.",
}
LEETCODE_EXAMPLES = [
    {"id": "l0", "query": "Find a target in a sorted array in logarithmic time.", "reasoning": "",
     "gold_ids": ["lc_bsearch"], "gold_ids_long": [], "excluded_ids": ["lc_sort"]},
    {"id": "l1", "query": "Shortest path in an unweighted graph with search.", "reasoning": "",
     "gold_ids": ["lc_graph"], "gold_ids_long": [], "excluded_ids": ["N/A"]},
]


def _write_parquet(path, rows):
  import pyarrow as pa
  import pyarrow.parquet as pq
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)


def _write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="session")
def bright_dir(tmp_path_factory):
  """biology as parquet (the HF layout), leetcode as JSON lines."""
  root = tmp_path_factory.mktemp("bright")
  docs = [{"id": k, "content": v} for k, v in BIOLOGY_DOCS.items()]
  _write_parquet(f"{root}/examples/biology-00000-of-00001.parquet", BIOLOGY_EXAMPLES)
  _write_parquet(f"{root}/documents/biology-00000-of-00001.parquet", docs)
  _write_parquet(f"{root}/long_documents/biology-00000-of-00001.parquet", docs)
  reason = [dict(e, query=e["query"] + " Reasoning: the relevant concept.") for e in BIOLOGY_EXAMPLES]
  _write_parquet(f"{root}/gpt4_reason/biology-00000-of-00001.parquet", reason)
  _write_jsonl(f"{root}/examples/leetcode.jsonl", LEETCODE_EXAMPLES)
  _write_jsonl(f"{root}/documents/leetcode.jsonl", [{"id": k, "content": v} for k, v in LEETCODE_DOCS.items()])
  return str(root)


class BagOfWordsEncoder:
  """Deterministic stand-in with the Encoder.encode signature; counts what it encodes."""

  def __init__(self, dim=64, fail_after_calls=None):
    self.dim, self.fail_after_calls = dim, fail_after_calls
    self.calls, self.texts_encoded, self.mesh = 0, 0, None

  def encode(self, texts, instruction=None, batch_size=32, max_length=2048, show_progress=None):
    if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
      raise KeyboardInterrupt("simulated interruption")
    self.calls += 1
    self.texts_encoded += len(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    for i, t in enumerate(texts):
      for w in t.lower().replace("?", " ").replace(".", " ").split():
        out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


@pytest.fixture
def bow_encoder():
  return BagOfWordsEncoder


def _save_tiny_llama(out, tokenizer_dir, class_name: str, num_layers: int,
                     vocab_size: int = 512) -> str:
  transformers = pytest.importorskip("transformers")
  cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=0,
                                 eos_token_id=1, pad_token_id=2)
  import torch
  torch.manual_seed(0)
  getattr(transformers, class_name)(cfg).save_pretrained(str(out))
  for name in os.listdir(tokenizer_dir):
    shutil.copy(os.path.join(tokenizer_dir, name), out)
  return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
  """A random 2-layer Llama in HF format with the test tokenizer."""
  return _save_tiny_llama(tmp_path_factory.mktemp("tiny_model"), tokenizer_dir, "LlamaModel", 2)


@pytest.fixture(scope="session")
def tiny_eos_model_dir(tmp_path_factory, tokenizer_dir):
  """The tiny Llama with `<|endoftext|>` added to its tokenizer, which the qwen3_embedding recipe
  appends to every text."""
  from reasonir_jax.tokenization import load_tokenizer
  tok = load_tokenizer(tokenizer_dir)
  tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
  tok_dir = str(tmp_path_factory.mktemp("eos_tokenizer"))
  tok.save_pretrained(tok_dir)
  return _save_tiny_llama(tmp_path_factory.mktemp("tiny_eos_model"), tok_dir, "LlamaModel", 2,
                          vocab_size=len(tok))


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory, tokenizer_dir):
  """A random 1-layer Llama causal LM (the reader of the RAG tests) with the test tokenizer."""
  return _save_tiny_llama(tmp_path_factory.mktemp("tiny_lm"), tokenizer_dir, "LlamaForCausalLM", 1)
