"""The JSONL -> TFRecord converter (HQ document-id join, rejects, line-numbered errors) and the
shipped sample data."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reasonir_jax.assets.sample_facts import DOMAINS
from reasonir_jax.data import convert, sample
from reasonir_jax.data.reader import read_rows


def _write_jsonl(path, objs):
  with open(path, "w", encoding="utf-8") as f:
    for o in objs:
      f.write((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n")


def test_reference_jsonl_to_tfrecords_to_rows(tmp_path):
  src = tmp_path / "public.jsonl"
  _write_jsonl(src, [
      {"query": ["Retrieve a passage that answers the question", "why is the sky blue?"],
       "pos": [["", "Rayleigh scattering favours short wavelengths."]],
       "neg": [["", "The sky is a popular subject of paintings."], ["", "Blue is a primary colour."]]},
      {"query": ["", "café ünïcode"], "pos": [["", "a b"]]},
  ])
  assert convert.main(["--input", str(src), "--output", str(tmp_path / "out"), "--num-shards", "2",
                       "--source", "public"]) == 0
  rows = sorted(read_rows(str(tmp_path / "out" / "public-*-of-00002.tfrecord")), key=lambda r: r.row_id)
  assert [r.query for r in rows] == ["why is the sky blue?", "café ünïcode"]
  assert rows[0].query_instruction == "Retrieve a passage that answers the question"
  assert rows[0].negatives == ["The sky is a popular subject of paintings.", "Blue is a primary colour."]
  assert rows[1].negatives == [] and rows[1].source == "public"
  assert len({r.row_id for r in rows}) == 2


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_hq_document_ids_are_joined_and_missing_ids_reported(tmp_path, fmt):
  docs = [{"id": "biology/doc_1.txt", "content": "Osmosis moves water toward higher solute concentration."},
          {"id": "doc_2", "content": "Countercurrent exchange keeps heat in the core."}]
  docs_path = tmp_path / f"docs.{fmt}"
  if fmt == "parquet":
    pq.write_table(pa.Table.from_pylist(docs), docs_path)
  else:
    _write_jsonl(docs_path, docs)
  inst = "Given a biology post, retrieve relevant passages that help answer the post"
  _write_jsonl(tmp_path / "hq.jsonl", [
      {"query": [inst, "Why do cucumbers go limp in brine?"], "pos": [["", "biology/doc_1.txt"]],
       "neg": [["", "Cucumbers are gourds."]]},
      {"query": [inst, "Why do ducks not freeze?"], "pos": [["", "doc_2"]], "neg": []},
      {"query": [inst, "Missing one"], "pos": [["", "biology/doc_404.txt"]], "neg": []},
  ])
  report = convert.convert(str(tmp_path / "hq.jsonl"), str(tmp_path / "out"), 1, source="hq",
                           documents_path=str(docs_path), progress=False)
  assert report["rows_written"] == 2 and report["rows_rejected"] == 1
  assert report["missing_document_ids"] == ["biology/doc_404.txt"]
  rejects = [json.loads(l) for l in open(report["rejects_path"])]
  assert rejects == [{"line": 3, "missing_document_ids": ["biology/doc_404.txt"]}]
  rows = list(read_rows(report["paths"]))
  assert sorted(r.positives[0] for r in rows) == sorted(d["content"] for d in docs)
  assert not any("doc_404" in p for r in rows for p in r.positives)
  # Without --documents an id-like positive is never written as text.
  report = convert.convert(str(tmp_path / "hq.jsonl"), str(tmp_path / "out2"), 1, progress=False)
  assert report["rows_written"] == 0 and report["rows_rejected"] == 3


def test_hq_ids_join_over_a_bright_directory_or_several_files(tmp_path, caplog):
  # HQ ids span the BRIGHT corpora: one documents file per task, all read.
  docs_dir = tmp_path / "bright" / "documents"
  docs_dir.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist([
      {"id": "bio_1.txt", "content": "Osmosis moves water."},
      {"id": "shared.txt", "content": "The same text in two corpora."},
      {"id": "clash.txt", "content": "Biology's text."}]),
      docs_dir / "biology-00000-of-00001.parquet")
  _write_jsonl(docs_dir / "leetcode.jsonl", [
      {"id": "leetcode_7.txt", "content": "Reverse the digits of an integer."},
      {"id": "shared.txt", "content": "The same text in two corpora."},
      {"id": "clash.txt", "content": "LeetCode's text."}])
  _write_jsonl(tmp_path / "hq.jsonl", [
      {"query": ["", "Why do cells swell?"], "pos": [["", "bio_1.txt"]]},
      {"query": ["", "How to reverse 123?"], "pos": [["", "leetcode_7.txt"]]},
      {"query": ["", "Shared?"], "pos": [["", "shared.txt"]]},
      {"query": ["", "Which one?"], "pos": [["", "clash.txt"]]}])
  for spec in (str(tmp_path / "bright"),
               f"{docs_dir}/biology-00000-of-00001.parquet,{docs_dir}/leetcode.jsonl"):
    out = tmp_path / f"out{len(spec)}"
    with caplog.at_level("WARNING"):
      report = convert.convert(str(tmp_path / "hq.jsonl"), str(out), 1, source="hq",
                               documents_path=spec, progress=False)
    rows = sorted(read_rows(report["paths"]), key=lambda r: r.query)
    assert [r.positives for r in rows] == [["Reverse the digits of an integer."],
                                           ["The same text in two corpora."],
                                           ["Osmosis moves water."]]
    # An id two corpora give different texts joins nothing: the row is rejected, not guessed.
    assert report["missing_document_ids"] == ["clash.txt"]
    assert "clash.txt" in caplog.text and "different texts" in caplog.text
  # Only the ids the input names are held.
  assert set(convert.load_documents(str(tmp_path / "bright"), {"bio_1.txt"})) == {"bio_1.txt"}
  with pytest.raises(convert.ConvertError, match="nowhere.parquet"):
    convert.load_documents(str(tmp_path / "nowhere.parquet"))


@pytest.mark.parametrize("line,match", [
    ("{not json", "bad.jsonl:2: not valid JSON"),
    ('{"pos": [["", "p"]]}', "bad.jsonl:2: missing field 'query'"),
    ('{"query": ["i", "q"], "pos": []}', "bad.jsonl:2: 'pos' must be a non-empty list"),
    ('{"query": ["i"], "pos": [["", "p q"]]}', r"bad.jsonl:2: 'query' must be \[instruction, text\]"),
    ('{"query": ["i", "q"], "pos": [["", "p q"]], "neg": [["a", "n"], ["b", "m"]]}', "share one instruction"),
    # Empty or whitespace-only texts (a text with no token would embed to nothing).
    ('{"query": ["i", "q"], "pos": [["", "p q"]], "neg": [["", ""]]}', r"bad.jsonl:2: .* in neg\[0\]$"),
    ('{"query": ["i", " \\n\\t"], "pos": [["", "p q"]]}', r"bad.jsonl:2: .* in query$"),
    ('{"query": ["i", "q"], "pos": [["", "p q"], ["", " "]], "neg": [["", "n"], ["", "\\n"]]}',
     r"bad.jsonl:2: empty or whitespace-only text in pos\[1\], neg\[1\]$"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, match):
  path = tmp_path / "bad.jsonl"
  _write_jsonl(path, [{"query": ["i", "q"], "pos": [["", "fine text"]]}, line])
  with pytest.raises(convert.ConvertError, match=match):
    convert.convert(str(path), str(tmp_path / "out"), 1, progress=False)
  assert not list((tmp_path).glob("out/*.tfrecord"))  # nothing half-written under a final name


def test_shipped_sample_data(tmp_path):
  rows = [json.loads(l) for l in open(sample.sample_rows_path(), encoding="utf-8")]
  assert len(rows) == 280
  assert len({r["domain"] for r in rows}) >= 7
  train_queries = {r["query"][1] for r in rows}
  train_concepts = {r["pos"][0][1].split("\n\n")[0] for r in rows}
  train_situations = [s for facts in DOMAINS.values() for f in facts for s in f["situations"]]
  assert all(r["query"][0] and r["pos"][0][1] and r["neg"] for r in rows)
  pattern = sample.materialize_sample_tfrecords(str(tmp_path))
  assert len(list(read_rows(pattern))) == len(rows)
  bright = sample.sample_bright_dir()
  for task in ("biology", "leetcode"):
    ex = pq.read_table(f"{bright}/examples/{task}-00000-of-00001.parquet").to_pylist()
    docs = {d["id"] for d in pq.read_table(f"{bright}/documents/{task}-00000-of-00001.parquet").to_pylist()}
    long_table = pq.read_table(f"{bright}/long_documents/{task}-00000-of-00001.parquet").to_pylist()
    long_docs = {d["id"] for d in long_table}
    rewritten = pq.read_table(f"{bright}/gpt4_reason/{task}-00000-of-00001.parquet").to_pylist()
    assert len(ex) == len(rewritten) == 20 and len(docs) == 200
    assert all(set(e["gold_ids"]) <= docs and set(e["gold_ids_long"]) <= long_docs for e in ex)
    assert any(e["excluded_ids"] == ["N/A"] for e in ex)
    assert any(e["excluded_ids"] != ["N/A"] and set(e["excluded_ids"]) <= docs for e in ex)
    assert [r["id"] for r in rewritten] == [e["id"] for e in ex]
    # Held out: no evaluation query is a training query or reuses a training scenario, but the
    # concept each one asks for is taught by some training rows.
    for e in ex + rewritten:
      assert e["query"] not in train_queries, e["query"]
      assert not any(s in e["query"] for s in train_situations), e["query"]
    concepts = {d["id"]: d["content"].split("\n\n")[0] for d in long_table}
    assert all(concepts[e["gold_ids_long"][0]] in train_concepts for e in ex)
  from reasonir_jax.tokenization import load_tokenizer
  tok = load_tokenizer(sample.sample_tokenizer_dir())
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2) and len(tok) <= 2048


def test_empty_texts_are_refused_by_the_command_and_joined_documents_checked(tmp_path, capsys):
  path = tmp_path / "rows.jsonl"
  _write_jsonl(path, [{"query": ["i", "q"], "pos": [["", "fine text"]], "neg": [["", "n n"]]}] * 3
               + [{"query": ["i", "q"], "pos": [["", "fine text"]], "neg": [["", "n"], ["", ""]]}])
  assert convert.main(["--input", str(path), "--output", str(tmp_path / "out"),
                       "--num-shards", "2"]) == 2
  assert f"error: {path}:4: empty or whitespace-only text in neg[1]" in capsys.readouterr().err
  assert not list(tmp_path.glob("out/*.tfrecord"))
  docs = tmp_path / "docs.jsonl"
  _write_jsonl(docs, [{"id": "doc_1", "content": "  "}])
  _write_jsonl(path, [{"query": ["i", "q"], "pos": [["", "doc_1"]]}])
  with pytest.raises(convert.ConvertError, match=r"rows.jsonl:1: .* in pos\[0\] \(document 'doc_1'\)"):
    convert.convert(str(path), str(tmp_path / "out"), 1, documents_path=str(docs), progress=False)
