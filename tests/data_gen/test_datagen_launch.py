"""The GPU launch script: dry-run commands, flag checks, and a real run through it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from data_gen.testing import ScriptedChatServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "launch", "datagen", "run_shard.sh")


def _run(args, **env):
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **env}, timeout=60)


def test_dry_run_splits_local_shards_and_gpus():
  res = _run(["--dry-run", "hq", "--input", "seeds dir/*.jsonl", "--output-dir", "out",
              "--model", "m"], NUM_SHARDS="4", SHARD_INDEX="1", LOCAL_SHARDS="2",
             GPUS_PER_SHARD="4")
  assert res.returncode == 0, res.stderr
  lines = res.stdout.strip().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith("+ CUDA_VISIBLE_DEVICES=0,1,2,3 ")
  assert "'seeds dir/*.jsonl'" in lines[0]
  assert "--tensor-parallel-size 4 --shard-index 2 --num-shards 8" in lines[0]
  assert lines[1].startswith("+ CUDA_VISIBLE_DEVICES=4,5,6,7 ")
  assert "--shard-index 3 --num-shards 8" in lines[1]


def test_bad_settings_are_refused():
  res = _run(["--dry-run", "hq"], NUM_SHARDS="2", SHARD_INDEX="2")
  assert res.returncode == 2 and "SHARD_INDEX must lie in [0, NUM_SHARDS=2)" in res.stderr
  res = _run(["--dry-run", "nope"])
  assert res.returncode == 2 and "PIPELINE must be" in res.stderr
  res = _run(["--dry-run", "hq", "--num-shards", "3"])
  assert res.returncode == 2 and "NUM_SHARDS" in res.stderr


def test_real_run_through_the_script(tmp_path):
  (tmp_path / "docs.jsonl").write_text("".join(
      json.dumps({"id": f"d{i}", "text": f"D{i} " + "enzyme kinetics and inhibition " * 4})
      + "\n" for i in range(4)))
  answer = json.dumps({"hard_query": ["Why would adding an inhibitor slow my assay so much?"]})
  with ScriptedChatServer(lambda req: answer) as server:
    res = _run(["hq", "--backend", "openai", "--base-url", server.base_url, "--model", "m",
                "--input", str(tmp_path / "docs.jsonl"), "--output-dir", str(tmp_path / "out"),
                "--queries-per-doc", "1", "--min-doc-words", "5", "--near-dup-threshold", "0"],
               PYTHON=sys.executable, NUM_SHARDS="1", LOG_DIR=str(tmp_path / "logs"),
               PYTHONPATH=REPO)
  assert res.returncode == 0, res.stderr
  with open(tmp_path / "out" / "hq-shard00000of00001.manifest.json") as f:
    assert json.load(f)["rows"] == 4
  assert os.listdir(tmp_path / "logs") == ["hq-shard0of1.log"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  res = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout
