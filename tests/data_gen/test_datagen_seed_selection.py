"""Seed selection: the streaming, signature-only near-duplicate index, the educational-quality
classifier path (a tiny random one built here), and the public selection (exact dedup within a
task, raw score >= 1, top N per BRIGHT task; no top N without a scorer unless --take-first)."""
import json

import numpy as np
import pytest

from data_gen import filters, inputs
from data_gen.pipelines import hq
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


def _score_by_marker(texts):
  """Score = the number after "score=" in the text (an injected scorer for the ranking logic)."""
  return [float(t.split("score=")[1].split()[0]) for t in texts]


def test_selection_is_exact_dedup_then_min_score_then_top_n_per_task():
  docs = [
      {"id": "b1", "task": "biology", "text": "score=3 osmosis"},
      {"id": "b2", "task": "biology", "text": "Score=3  OSMOSIS"},  # exact duplicate of b1
      {"id": "b3", "task": "biology", "text": "score=0.99 gills"},  # below the threshold
      {"id": "b4", "task": "biology", "text": "score=1 xylem"},  # raw score 1 is kept
      {"id": "b0", "task": "biology", "text": "score=3 stomata"},  # ties b1: the id decides
      {"id": "l1", "task": "leetcode", "text": "score=3 osmosis"},  # same text, other task: kept
      {"id": "l2", "task": "leetcode", "text": "score=2 two pointers"},
      {"id": "l3", "task": "leetcode", "text": "score=1.5 heaps"},
  ]
  kept, report = hq.filter_documents(iter(docs), scorer=_score_by_marker, top_n=2)
  assert [d["id"] for d in kept] == ["b0", "b1", "l1", "l2"]  # the best 2 of each task
  assert [d["quality_score"] for d in kept] == [3.0, 3.0, 3.0, 2.0]
  assert report == {"input": 8, "after_length": 8, "after_exact_dedup": 7,
                    "after_min_quality": 6, "after_top_n": 4,
                    "kept_per_task": {"biology": 2, "leetcode": 2}}
  kept, _ = hq.filter_documents(iter(docs), scorer=_score_by_marker, min_score=2.5, top_n=5)
  assert [d["id"] for d in kept] == ["b0", "b1", "l1"]
  # Streaming with a bounded buffer per task: the same answer when pruning runs often.
  many = [{"id": f"x{i:03d}", "task": "aops", "text": f"score={i % 17} t{i}"} for i in range(300)]
  pruned = filters.top_per_task(filters.scored(iter(many), _score_by_marker, 8), filters.by_score,
                                3, slack=1)
  assert [d["id"] for d in pruned] == ["x016", "x033", "x050"]
  with pytest.raises(ValueError, match="'n1'"):
    hq.filter_documents([{"id": "n1", "text": "score=nan x"}], scorer=_score_by_marker)


def test_top_n_without_a_quality_model_is_refused_unless_take_first(tmp_path, capsys, caplog):
  docs = [{"id": f"d{i}", "task": "pony" if i % 2 else "aops", "text": f"text {i}"}
          for i in range(6)]
  with pytest.raises(ValueError, match="--quality-model .*--take-first"):
    hq.filter_documents(iter(docs), top_n=2)
  inp = tmp_path / "docs.jsonl"
  inp.write_text("".join(json.dumps(d) + "\n" for d in docs))
  out = tmp_path / "kept.jsonl"
  assert main(["filter", "--input", str(inp), "--output", str(out), "--top-n", "2"]) == 2
  err = capsys.readouterr().err
  assert "--top-n 2" in err and "--quality-model" in err and "--take-first" in err
  assert not out.exists()
  with caplog.at_level("WARNING"):
    assert main(["filter", "--input", str(inp), "--output", str(out), "--top-n", "2",
                 "--take-first"]) == 0
  kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
  assert kept == ["d0", "d2", "d1", "d3"]  # the first 2 of each task by id
  assert "BY ID, NOT BY QUALITY" in caplog.text and "aops: 2 (d0 .. d2)" in caplog.text
  with pytest.raises(ValueError, match="--take-first"):
    hq.filter_documents(iter(docs), top_n=2, take_first=True, scorer=_score_by_marker)


def test_bright_directory_seeds_scored_by_the_classifier_top_n_per_task(edu_classifier_dir,
                                                                        tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  bright = tmp_path / "bright"
  (bright / "documents").mkdir(parents=True)
  bio = [{"id": f"doc_{i}.txt", "content": f"Cells {i} divide by mitosis " * (i + 1)}
         for i in range(4)]
  bio.append({"id": "copy.txt", "content": bio[0]["content"]})  # an exact duplicate
  pq.write_table(pa.Table.from_pylist(bio), bright / "documents" /
                 "biology-00000-of-00001.parquet")
  leet = [{"id": f"doc_{i}.txt", "content": f"Sort {i} the array in place " * (i + 2)}
          for i in range(3)]  # the same ids as biology's: BRIGHT ids are unique per task only
  (bright / "documents" / "leetcode.jsonl").write_text(
      "".join(json.dumps(d) + "\n" for d in leet))
  docs = list(inputs.iter_documents(str(bright)))
  assert [(d["id"], d["task"]) for d in docs] == (
      [(f"biology/{d['id']}", "biology") for d in bio] +
      [(f"leetcode/{d['id']}", "leetcode") for d in leet])
  out = tmp_path / "kept.jsonl"
  assert main(["filter", "--input", str(bright), "--output", str(out), "--quality-model",
               edu_classifier_dir, "--min-quality=-1000", "--top-n", "2"]) == 0
  kept = [json.loads(line) for line in out.read_text().splitlines()]
  scores = filters.EduQualityScorer(edu_classifier_dir, device="cpu")([d["text"] for d in docs])
  expected = []
  for task in ("biology", "leetcode"):
    candidates = [(-s, d["id"]) for d, s in zip(docs, scores)
                  if d["task"] == task and d["id"] != "biology/copy.txt"]
    expected += [doc_id for _, doc_id in sorted(candidates)[:2]]
  assert [d["id"] for d in kept] == expected
  report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
  assert report["after_exact_dedup"] == 7 and report["kept_per_task"] == {"biology": 2,
                                                                          "leetcode": 2}
