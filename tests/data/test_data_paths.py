"""The shared file chores of reasonir_jax.paths: input expansion, JSON-lines/parquet records and
whole-or-nothing writes (local here; tests/training/test_training_remote.py covers gs://)."""
import json

import pytest

from reasonir_jax import paths


def test_atomic_write_shows_the_whole_file_or_none(tmp_path):
  target = tmp_path / "out.jsonl"
  with paths.atomic_write(str(target)) as f:
    f.write("one\n")
    assert not target.exists()  # written aside until the block ends
  assert target.read_text() == "one\n"
  with pytest.raises(RuntimeError):
    with paths.atomic_write(str(target)) as f:
      f.write("half")
      raise RuntimeError("writer failed")
  assert target.read_text() == "one\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
  with paths.atomic_write(str(tmp_path / "b.bin"), "wb") as f:
    f.write(b"\x00\x01")
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_glob_leaves_out_files_being_written(tmp_path):
  (tmp_path / "a.jsonl").write_text("")
  with paths.atomic_write(str(tmp_path / "b.jsonl")) as f:
    f.write("x")
    assert paths.glob(str(tmp_path / "*.jsonl*")) == [str(tmp_path / "a.jsonl")]


def test_expand_files_globs_and_directories(tmp_path):
  for name in ("b.jsonl", "a.parquet", "c.txt"):
    (tmp_path / name).write_text("")
  d = str(tmp_path)
  assert paths.expand(f"{d}/*.jsonl,{d}/c.txt") == [f"{d}/b.jsonl", f"{d}/c.txt"]
  assert paths.expand([d], dir_extensions=("jsonl", "parquet")) == [f"{d}/a.parquet",
                                                                     f"{d}/b.jsonl"]
  with pytest.raises(FileNotFoundError, match="no such file"):
    paths.expand(d)  # a directory is no file without dir_extensions
  with pytest.raises(FileNotFoundError, match="no .tfrecord files"):
    paths.expand([d], dir_extensions=("tfrecord",))
  with pytest.raises(FileNotFoundError, match="no files match"):
    paths.expand(f"{d}/*.none")


def test_iter_records_reads_json_lines_and_parquet(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]
  (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]) + "\n"
                                    + json.dumps(rows[1]) + "\n")
  pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "r.parquet"))
  got = list(paths.iter_records(str(tmp_path / "r.jsonl")))
  assert got == [(f"{tmp_path}/r.jsonl:1", rows[0]), (f"{tmp_path}/r.jsonl:3", rows[1])]
  assert [w for w, _ in paths.iter_records(str(tmp_path / "r.parquet"))] == [
      f"{tmp_path}/r.parquet[row 0]", f"{tmp_path}/r.parquet[row 1]"]
  assert [r for _, r in paths.iter_records(str(tmp_path / "r.parquet"))] == rows
  (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    list(paths.iter_records(str(tmp_path / "bad.jsonl")))
