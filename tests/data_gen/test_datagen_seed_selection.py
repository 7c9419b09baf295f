"""Seed selection for large inputs: the streaming, signature-only near-duplicate index and the
shipped educational-quality classifier (a tiny random one built here)."""
import json

import numpy as np
import pytest

from data_gen import filters
from data_gen.cli import main


def _text(i, n=80):
  return " ".join(f"w{i}_{k}" for k in range(n))


def test_near_dup_index_streams_and_survives_merges(monkeypatch):
  monkeypatch.setattr(filters.NearDupIndex, "_MERGE_AT", 64)  # exercise the sorted arrays
  docs = []
  for i in range(300):
    docs.append({"id": f"d{i}", "text": _text(i)})
    if i % 10 == 0:  # a near duplicate (one word changed) of an early document
      base = _text(i // 10).split()
      base[40] = "changed"
      docs.append({"id": f"near{i}", "text": " ".join(base)})
  seen = []

  def stream():
    for d in docs:
      seen.append(d["id"])
      yield d

  kept = filters.near_dedup(stream())
  first = next(kept)
  assert first["id"] == "d0" and len(seen) == 1  # streaming: nothing read ahead
  kept_ids = [first["id"]] + [d["id"] for d in kept]
  assert kept_ids == [f"d{i}" for i in range(300)]
  index = filters.NearDupIndex()
  for d in docs:
    index.add_if_new(d["text"])
  assert index.size == 300 and index._sigs.dtype == np.uint32


@pytest.fixture(scope="module")
def edu_classifier_dir(tmp_path_factory, tokenizer_dir):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, num_labels=1, pad_token_id=2,
                                    bos_token_id=0, eos_token_id=1)
  out = tmp_path_factory.mktemp("edu")
  transformers.LlamaForSequenceClassification(config).save_pretrained(out)
  transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
  return str(out)


def test_edu_quality_scorer_matches_the_model_and_filters_top_n(edu_classifier_dir, tmp_path):
  import torch
  import transformers
  texts = [f"Lesson {i}: photosynthesis turns light into chemical energy " * (i + 1)
           for i in range(6)]
  scorer = filters.EduQualityScorer(edu_classifier_dir, batch_size=4, device="cpu")
  scores = scorer(texts)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(edu_classifier_dir)
  tok = transformers.AutoTokenizer.from_pretrained(edu_classifier_dir)
  with torch.no_grad():
    ref = [model(**tok([t], return_tensors="pt")).logits[0, 0].item() for t in texts]
  np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
  # The CLI: score >= --min-quality, then the --top-n best, the score kept on each document.
  inp = tmp_path / "docs.jsonl"
  inp.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                         for i, t in enumerate(texts)))
  threshold = sorted(scores)[1]  # drops the lowest
  out = tmp_path / "kept.jsonl"
  assert main(["filter", "--input", str(inp), "--output", str(out), "--min-doc-words", "1",
               "--quality-model", edu_classifier_dir, "--min-quality", repr(threshold),
               "--top-n", "3", "--near-dup-threshold", "0"]) == 0
  kept = [json.loads(line) for line in out.read_text().splitlines()]
  best = sorted(range(6), key=lambda i: -scores[i])[:3]
  assert [d["id"] for d in kept] == [f"d{i}" for i in best]
  assert [round(d["quality_score"], 4) for d in kept] == [round(scores[i], 4) for i in best]
  with pytest.raises(ValueError, match="--quality-model"):
    filters.EduQualityScorer(str(tmp_path / "nowhere"))
