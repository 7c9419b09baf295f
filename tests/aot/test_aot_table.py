"""The scaling table command (reasonir_jax.aot_table) and the AOT report's bucket sweep, on
reports built by hand (the real compiles are in test_aot_report.py)."""
import json

import pytest

from reasonir_jax.scale import aot, aot_table
from reasonir_jax.configs import load_config


def _report(topology, chunk, total_gib, fits, **extra):
  r = {"topology": topology, "chips": 64, "grad_cache_chunk": chunk, "attention": "splash",
       "per_chip_bytes": int(total_gib * 2**30), "hbm_bytes": 95 * 2**30, "fits": fits,
       "mesh": {"data": 1, "fsdp": 64, "tensor": 1}, "compile_seconds": 12.0,
       "memory": {"params": 2**30, "opt_state": 2**30, "activations_temp": 2**31, "code": 1},
       "git_commit": "abc123", "jax": "0.10.2", "libtpu": "0.0.42.1", "overrides": []}
  r.update(extra)
  return r


def test_rows_replace_the_same_row_and_the_table_shows_provenance(tmp_path, monkeypatch, capsys):
  out = tmp_path / "t.jsonl"
  out.write_text(json.dumps(_report("v5p-128", 0, 120.0, False)) + "\n"
                 + json.dumps(_report("v5p-64", 32, 9.0, True)) + "\n")
  new = _report("v5p-128", 0, 80.0, True, host_bytes_per_chip=112 * 10**9)
  new["memory"]["host_temp"] = 48 * 2**30
  monkeypatch.setattr(aot_table, "run_row", lambda row, overrides, config: new)
  assert aot_table.main([str(out), "--rows", "v5p-128:0"]) == 0
  assert not (tmp_path / "t.jsonl.partial").exists()
  reports = aot_table.read_reports(str(out))
  assert len(reports) == 2  # replaced, not appended
  assert [r["per_chip_bytes"] for r in reports if r["topology"] == "v5p-128"] == [80 * 2**30]
  table = capsys.readouterr().out.strip().splitlines()
  assert table[0].startswith("| slice | chips |") and "commit" in table[0]
  # v5p-64 sorts before v5p-128; each row names its attention, commit and versions.
  assert table[2].startswith("| v5p-64 | 64 | 1, 64, 1 | 32 | splash |")
  assert "| 80.0 GiB | 95 GiB | 48.0 of 104 GiB | **yes** | 12 s | abc123 | 0.10.2 / 0.0.42.1 |" \
      in table[3]
  assert "| 9.0 GiB | 95 GiB | - | **yes** |" in table[2]


def test_old_reports_keep_their_chunk_from_the_overrides():
  old = _report("v5p-64", 0, 9.0, True, overrides=["--config.train.grad_cache_chunk=32"])
  del old["grad_cache_chunk"]
  merged = aot_table.merge([old], _report("v5p-64", 32, 8.0, True))
  assert [r["per_chip_bytes"] for r in merged] == [8 * 2**30]


@pytest.mark.parametrize("row", ["v5p-128:big", "v5p-128:0 --num_slices=2", "0xv5p-64:0", ""])
def test_a_bad_row_exits_2(capsys, row):
  assert aot_table.main(["x.jsonl", "--rows", row]) == 2
  assert "TOPOLOGY]:CHUNK" in capsys.readouterr().err


def test_rows_carry_slices_and_their_own_overrides():
  row = aot_table.parse_row("2xv5p-64:32 --config.data.packing=True")
  assert row == aot_table.Row("2xv5p-64", 32, ("--config.data.packing=True",))
  assert row.aot_args() == ["--topology=v5p-64", "--num_slices=2",
                            "--config.train.grad_cache_chunk=32", "--config.data.packing=True"]
  assert aot_table.parse_row("v5p-128:0").aot_args()[:2] == ["--topology=v5p-128", "--num_slices=1"]
  # Every row of the table is one of the default rows, so one command regenerates all of them.
  for r in aot_table.DEFAULT_ROWS:
    aot_table.parse_row(r)
  assert {"2xv5p-64:0", "v5p-128:0 --config.data.packing=True",
          "v5p-128:512 --config.data.packing=True"} <= set(aot_table.DEFAULT_ROWS)


def test_the_table_file_is_written_once_after_every_row(tmp_path, monkeypatch):
  # The reports name the commit they were compiled from: rewriting the tracked table between
  # rows would make every later row of the run "-dirty".
  out = tmp_path / "t.jsonl"
  out.write_text(json.dumps(_report("v5p-64", 0, 9.0, True)) + "\n")
  before = out.read_text()
  seen = []

  def fake_run_row(row, overrides, config):
    seen.append(out.read_text())
    return _report(row.topology, row.chunk, 1.0, True, overrides=list(row.overrides))
  monkeypatch.setattr(aot_table, "run_row", fake_run_row)
  rows = ["v5p-128:0", "2xv5p-64:0", "v5p-64:0 --config.model.remat_policy=full"]
  assert aot_table.main([str(out), "--rows", *rows]) == 0
  assert seen == [before] * 3
  reports = aot_table.read_reports(str(out))
  assert [(r["topology"], r["overrides"]) for r in reports] == [
      ("v5p-64", []), ("v5p-64", ["--config.model.remat_policy=full"]), ("2xv5p-64", []),
      ("v5p-128", [])]
  assert not (tmp_path / "t.jsonl.partial").exists()


def test_step_shapes_cover_every_padded_shape_up_to_the_max_lengths():
  from reasonir_jax.training.step import step_shapes
  config = load_config("tiny", ["data.bucket_lengths=(32,64,128)", "data.query_max_length=64"])
  assert step_shapes(config) == [(q, p) for q in (32, 64) for p in (32, 64, 128)]
  # Packed rows have one shape: the budget of each side.
  config = load_config("tiny", ["data.packing=True", "data.query_max_length=64"])
  assert step_shapes(config) == [(64, 128)]


def test_the_bucket_sweep_reports_the_worst_shape(monkeypatch):
  config = load_config("tiny", ["data.bucket_lengths=(64,128)"])

  def fake(config, slice_, num_slices, q, p, log=print):
    return {"query_len": q, "passage_len": p, "per_chip_bytes": q * p, "fits": q * p < 128 * 128,
            "compile_seconds": 1.0}

  monkeypatch.setattr(aot, "run_report", fake)
  worst = aot.worst_bucket_report(config, None, log=lambda *_: None)
  assert (worst["query_len"], worst["passage_len"], worst["fits"]) == (128, 128, False)
  assert len(worst["buckets"]) == 4 and worst["compile_seconds"] == 4.0


def _fake_aot_process(monkeypatch, report):
  """Stands in for the `python -m reasonir_jax.scale.aot` process of a row: it prints `report`;
  the returned dict gets the command it was started with."""
  seen = {}

  class Done:
    returncode = 0
    stdout = json.dumps(report) + "\n"

  def fake_run(cmd, **kwargs):
    seen["cmd"] = cmd
    return Done()

  monkeypatch.setattr(aot_table.subprocess, "run", fake_run)
  return seen


def test_a_multi_slice_row_runs_the_report_with_num_slices(monkeypatch):
  assert aot_table.parse_row("2xv5p-64:0") == aot_table.Row("2xv5p-64", 0, ())
  with pytest.raises(ValueError, match=r"TOPOLOGY\]:CHUNK"):
    aot_table.parse_row("0xv5p-64:0")
  seen = _fake_aot_process(monkeypatch, _report("2xv5p-64", 0, 47.0, True))
  report = aot_table.run_row(aot_table.parse_row("2xv5p-64:0"), [], "llama3_8b")
  assert "--topology=v5p-64" in seen["cmd"] and "--num_slices=2" in seen["cmd"]
  assert report["topology"] == "2xv5p-64"


def test_a_row_of_another_config_is_its_own_row(tmp_path, monkeypatch, capsys):
  # A Qwen3 report of the same slice and chunk must not replace the Llama row (the key and the
  # table name the config file); rows of other configs follow the default's.
  row = aot_table.parse_row(f"v5p-128:64 {aot_table.QWEN3_8B} --config.data.packing=True")
  assert row == aot_table.Row("v5p-128", 64, ("--config.data.packing=True",),
                              "reasonir_jax/configs/qwen3_8b.py")
  assert not any(a.startswith("--config=") for a in row.aot_args())
  seen = _fake_aot_process(monkeypatch, _report("v5p-128", 64, 5.0, True))
  qwen = aot_table.run_row(aot_table.parse_row(f"v5p-128:64 {aot_table.QWEN3_8B}"), [],
                           "reasonir_jax/configs/llama3_8b.py")
  assert "--config=reasonir_jax/configs/qwen3_8b.py" in seen["cmd"]
  assert "--config=reasonir_jax/configs/llama3_8b.py" not in seen["cmd"]
  assert qwen["config"] == "reasonir_jax/configs/qwen3_8b.py" and qwen["overrides"] == []
  llama = aot_table.run_row(aot_table.parse_row("v5p-128:64"), [],
                            "reasonir_jax/configs/llama3_8b.py")
  assert "--config=reasonir_jax/configs/llama3_8b.py" in seen["cmd"]

  old = _report("v5p-128", 64, 4.0, True)  # no "config": compiled before the field existed
  merged = aot_table.merge(aot_table.merge([old], qwen), _report("v5p-64", 32, 7.0, True))
  assert len(merged) == 3
  assert len(aot_table.merge(merged, llama)) == 3  # the default config's row is replaced
  table = aot_table.markdown_table(merged).splitlines()
  assert table[2].startswith("| v5p-64 | 64 |") and table[3].startswith("| v5p-128 | 64 |")
  assert table[4].startswith("| v5p-128 --config=reasonir_jax/configs/qwen3_8b.py | 64 |")
  assert {f"v5p-128:0 {aot_table.QWEN3_8B}", f"v5p-128:64 {aot_table.QWEN3_8B}"} <= set(
      aot_table.DEFAULT_ROWS)


@pytest.mark.parametrize("row", ["v5p-128:0 --config=", "v5p-128:0 --config=a.py --config=b.py"])
def test_a_row_names_at_most_one_config_file(capsys, row):
  assert aot_table.main(["x.jsonl", "--rows", row]) == 2
  assert "--config=FILE" in capsys.readouterr().err
