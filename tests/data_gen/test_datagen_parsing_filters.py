"""Answer parsing (fences, prose, strict validation), seed filters, and input readers."""
import json
import sys

import pytest

from data_gen import filters, inputs
from data_gen.parsing import (AnswerError, extract_json_object, require_keys, require_standalone,
                              require_text)
from data_gen.pipelines.hq import filter_documents


@pytest.mark.parametrize("text", [
    '{"query": "x"}',
    'Here is the JSON:\n```json\n{"query": "x"}\n```\nHope it helps.',
    '```\n{"query": "x"}\n```',
    'Sure. {"query": "x"} -- done',
    'noise {not json} then {"query": "x"}',
])
def test_extract_json_tolerates_fences_and_prose(text):
  assert extract_json_object(text) == {"query": "x"}


@pytest.mark.parametrize("text", ["", "   ", "no json here", '["a list"]', '{"query": "x"'])
def test_extract_json_rejects_non_objects(text):
  with pytest.raises(AnswerError):
    extract_json_object(text)


def test_strict_validation():
  with pytest.raises(AnswerError, match="missing"):
    require_keys({}, {"query"})
  with pytest.raises(AnswerError, match="unexpected"):
    require_keys({"query": "a", "extra": 1}, {"query"})
  with pytest.raises(AnswerError, match="expected a string"):
    require_text(["a"], "query")
  with pytest.raises(AnswerError, match="empty"):
    require_text("  ", "query")
  with pytest.raises(AnswerError, match="at most 3"):
    require_text("one two three four", "query", 1, 3)
  assert require_text(" one two ", "query", 2, 2) == "one two"
  with pytest.raises(AnswerError, match="stand alone"):
    require_standalone("According to the passage, why?", "q")
  assert require_standalone("Why does a documented API break?", "q")


def test_near_dedup_and_length_and_exact():
  base = " ".join(f"word{i}" for i in range(100))
  docs = [{"id": "a", "text": base},
          {"id": "b", "text": base.replace("word50", "changed")},  # near duplicate of a
          {"id": "c", "text": " ".join(f"other{i}" for i in range(100))},
          {"id": "d", "text": "  " + base.upper() + " "},  # exact duplicate after normalizing
          {"id": "e", "text": "tiny"}]
  assert [d["id"] for d in filters.length_filter(docs, 5, None)] == ["a", "b", "c", "d"]
  assert [d["id"] for d in filters.exact_dedup(docs)] == ["a", "b", "c", "e"]
  kept = filters.near_dedup(docs[:3], threshold=0.8)
  assert [d["id"] for d in kept] == ["a", "c"]
  assert [d["id"] for d in filters.near_dedup(docs[:3], threshold=0.99)] == ["a", "b", "c"]
  sh_a, sh_b = filters.shingles(docs[0]["text"]), filters.shingles(docs[1]["text"])
  assert 0.85 < filters.jaccard(sh_a, sh_b) < 0.95
  # MinHash estimates the Jaccard similarity.
  hasher = filters.MinHasher(num_perm=256)
  est = (hasher.signature(sh_a) == hasher.signature(sh_b)).mean()
  assert abs(est - filters.jaccard(sh_a, sh_b)) < 0.1


def test_quality_scorer_hook(tmp_path, monkeypatch):
  (tmp_path / "my_scorer.py").write_text(
      "def score(texts):\n  return [float(len(t.split())) for t in texts]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  fn = filters.load_callable("my_scorer:score")
  docs = [{"id": f"d{i}", "text": " ".join([f"w{i}"] * n)} for i, n in enumerate((1, 3, 2, 3, 5))]
  kept, _ = filter_documents(docs, scorer=fn, min_score=2, top_n=3, batch_size=2)
  # score >= 2, best first, ties broken by id, then the top 3.
  assert [(d["id"], d["quality_score"]) for d in kept] == [("d4", 5.0), ("d1", 3.0), ("d3", 3.0)]
  with pytest.raises(ValueError, match="module:function"):
    filters.load_callable("no_colon")
  with pytest.raises(ValueError, match="cannot import"):
    filters.load_callable("no_such_module_xyz:f")
  with pytest.raises(ValueError, match="no callable"):
    filters.load_callable("my_scorer:missing")
  sys.modules.pop("my_scorer", None)


def test_lexical_overlap():
  assert filters.lexical_overlap("the cat sat on mats", "the cat sat on mats") == 1.0
  assert filters.lexical_overlap("volcanic eruptions release magma",
                                 "central banks raise interest rates") == 0.0


def test_read_documents_formats_and_errors(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"id": [1, 2], "content": ["alpha", "beta"]}), tmp_path / "b.parquet")
  (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x", "text": "t", "domain": "math"}) + "\n")
  docs = inputs.read_documents(f"{tmp_path}/a.jsonl,{tmp_path}/b.parquet")
  assert docs == [{"id": "x", "text": "t", "domain": "math"}, {"id": "1", "text": "alpha"},
                  {"id": "2", "text": "beta"}]
  (tmp_path / "dup.jsonl").write_text('{"id": "x", "text": "again"}\n')
  with pytest.raises(ValueError, match="duplicate id 'x'"):
    inputs.read_documents([str(tmp_path / "a.jsonl"), str(tmp_path / "dup.jsonl")])
  (tmp_path / "broken.jsonl").write_text('{"id": "x", \n')
  with pytest.raises(ValueError, match="broken.jsonl:1"):
    inputs.read_documents(str(tmp_path / "broken.jsonl"))
  with pytest.raises(FileNotFoundError, match="no files match"):
    inputs.read_documents(str(tmp_path / "*.nothing"))
  (tmp_path / "blank.jsonl").write_text('{"id": "a", "text": "t"}\n{"id": "b", "text": " \\n"}\n')
  with pytest.raises(ValueError, match=r"blank.jsonl:2: document 'b' has an empty"):
    inputs.read_documents(str(tmp_path / "blank.jsonl"))
  # Training-row inputs (negatives, mine): an empty text names file, line and field.
  (tmp_path / "rows.jsonl").write_text(json.dumps(
      {"query": ["i", "q"], "pos": [["", "p"]], "neg": [["", "n"], ["", ""]]}) + "\n")
  with pytest.raises(ValueError, match=r"rows.jsonl:1: .*empty negatives\[1\]"):
    inputs.read_training_rows(str(tmp_path / "rows.jsonl"))


def test_read_training_rows_from_tfrecord_and_jsonl(tmp_path):
  from reasonir_jax.data.schema import TrainingRow
  from reasonir_jax.data.writer import write_rows
  write_rows([TrainingRow(row_id="t0", source="s", query="q", positives=["p"])], str(tmp_path),
             "rows", 1)
  (tmp_path / "ref.jsonl").write_text(json.dumps(
      {"query": ["i", "q2"], "pos": [["", "p2"]], "neg": [["", "n2"]]}) + "\n")
  rows = inputs.read_training_rows(f"{tmp_path}/rows-*.tfrecord,{tmp_path}/ref.jsonl")
  assert [r.query for r in rows] == ["q", "q2"] and rows[1].negatives == ["n2"]
  (tmp_path / "bad.jsonl").write_text(json.dumps({"query": "flat string", "pos": []}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'query'"):
    inputs.read_training_rows(str(tmp_path / "bad.jsonl"))
