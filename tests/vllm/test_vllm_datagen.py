"""`data_gen hq` end to end on the `vllm` backend (real vLLM, CPU build): a run killed mid-way
(SIGKILL to its process group: the engine's processes die with it) and restarted accounts for
every input exactly once, as a row or a reject, and the restart does only what was left."""
import json
import os
import signal
import subprocess
import sys
import time

from reasonir_jax.data.reader import read_rows
from tests.vllm.vllm_util import COMPACT_JSON, MODEL_MAX_LEN, require_vllm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_DOCS = 40
LONG = "d7"  # far over max_model_len: rejected before it is sent


def _docs(path):
  with open(path, "w") as f:
    for i in range(N_DOCS):
      words = 2500 if f"d{i}" == LONG else 30
      f.write(json.dumps({"id": f"d{i}", "text": " ".join(f"topic{i}_{j}" for j in range(words))})
              + "\n")
  return str(path)


def _hq(inp, out, model):
  return [sys.executable, "-m", "data_gen", "hq", "--input", inp, "--output-dir", out,
          "--backend", "vllm", "--backend-model", model, "--max-model-len", str(MODEL_MAX_LEN),
          "--gpu-memory-utilization", "0.1", "--backend-dtype", "float32",
          "--backend-arg", "enforce_eager=True",
          "--backend-arg", f"structured_outputs_config={COMPACT_JSON!r}",
          "--max-tokens", "24", "--max-attempts", "2", "--queries-per-doc", "1",
          "--min-doc-words", "5", "--max-doc-words", "5000", "--min-query-words", "1",
          "--batch-size", "2", "--log-level", "WARNING"]


def _committed_ids(path):
  """Input ids of the complete lines of a stage file (a torn last line is not committed)."""
  ids = []
  with open(path) as f:
    for line in f:
      try:
        ids.append(json.loads(line)["id"])
      except (json.JSONDecodeError, KeyError):
        pass
  return ids


def test_hq_killed_mid_run_then_resumed_is_exactly_once(tmp_path, tiny_llama_dir):
  require_vllm()
  inp = _docs(tmp_path / "docs.jsonl")
  out = str(tmp_path / "out")
  ledger = os.path.join(out, "_stage", "hq-shard00000of00001", "ledger.jsonl")
  env = {**os.environ, "PYTHONPATH": REPO}
  log = open(tmp_path / "run1.log", "w")
  proc = subprocess.Popen(_hq(inp, out, tiny_llama_dir), cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
      if os.path.exists(ledger) and len(_committed_ids(ledger)) >= 4:
        break
      time.sleep(0.02)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, engine processes included
    proc.wait()
  done_before = _committed_ids(ledger)
  assert 4 <= len(done_before) < N_DOCS, open(tmp_path / "run1.log").read()[-3000:]
  assert not os.path.exists(os.path.join(out, "hq-shard00000of00001.manifest.json"))

  run2 = subprocess.run(_hq(inp, out, tiny_llama_dir), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
  done = _committed_ids(ledger)
  assert done[:len(done_before)] == done_before  # the restart did not redo what was done
  assert sorted(done) == sorted(f"d{i}" for i in range(N_DOCS))  # each input once
  with open(os.path.join(out, "hq-shard00000of00001.manifest.json")) as f:
    manifest = json.load(f)
  row_inputs = [r.row_id.split("/")[1] for r in
                read_rows(os.path.join(out, "hq-shard*.tfrecord"))]
  with open(os.path.join(out, manifest["rejects_file"])) as f:
    rejects = {r["input_id"]: r for r in map(json.loads, f)}
  assert len(row_inputs) == len(set(row_inputs)) == manifest["rows"]
  assert not set(row_inputs) & set(rejects)
  assert sorted([*row_inputs, *rejects]) == sorted(f"d{i}" for i in range(N_DOCS))
  assert manifest["inputs"] == N_DOCS
  assert manifest["inputs_accepted"] + manifest["inputs_rejected"] == N_DOCS
  assert rejects[LONG]["kind"] == "prompt_too_long", rejects[LONG]
