"""data_gen's command line end to end through real vLLM (CPU build), each run SIGKILLed mid-way
(to its process group: an in-process engine dies with it) and restarted: the two runs account
for every input exactly once, as a row or a reject, and the restart does only what was left.

Which backend runs which pipeline here: hq on `vllm`, vl on `vllm-async`, vl and negatives on
`openai` against the session's vLLM server (a data_gen process without an engine: a kill costs
no engine start). The other pairs (vl and negatives on `vllm`, negatives on `vllm-async`) run in
test_vllm_offline.py and test_vllm_async.py on those modules' engines, stopped by an exception
instead of a kill, since each SIGKILL here costs two engine starts."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.vllm.datagen_util import (N_INPUTS, check_exactly_once, check_long_input_rejected,
                                     check_negatives, check_vl, committed_ids, ledger_path,
                                     write_docs, write_rows)
from tests.vllm.vllm_util import COMPACT_JSON, MAX_MODEL_LEN, require_vllm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _backend_flags(backend, model, server):
  if backend == "openai":
    return ["--backend", "openai", "--base-url", server.base_url,
            "--backend-model", server.served_name]
  return ["--backend", backend, "--backend-model", model, "--max-model-len", str(MAX_MODEL_LEN),
          "--gpu-memory-utilization", "0.1", "--backend-dtype", "float32",
          "--backend-arg", "enforce_eager=True",
          "--backend-arg", f"structured_outputs_config={COMPACT_JSON!r}"]


def _command(pipeline, inp, out, backend_flags, pipeline_flags):
  return [sys.executable, "-m", "data_gen", pipeline, "--input", inp, "--output-dir", out,
          *backend_flags, "--max-tokens", "24", "--batch-size", "2", "--log-level", "WARNING",
          *pipeline_flags]


def _killed_then_resumed(cmd, out, name, n_inputs, log_dir, min_done=4):
  """Runs `cmd`, SIGKILLs it once `min_done` inputs are committed, reruns it to the end;
  returns check_exactly_once's (manifest, rejects)."""
  ledger = ledger_path(out, name)
  env = {**os.environ, "PYTHONPATH": REPO}
  log_path = os.path.join(log_dir, f"{name}-run1.log")
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
      if len(committed_ids(ledger)) >= min_done:
        break
      time.sleep(0.02)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, engine processes included
    proc.wait()
  done_before = committed_ids(ledger)
  assert min_done <= len(done_before) < n_inputs, open(log_path).read()[-3000:]
  assert not os.path.exists(os.path.join(out, f"{name}-shard00000of00001.manifest.json"))

  run2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert run2.returncode == 0, run2.stdout[-3000:] + run2.stderr[-3000:]
  return check_exactly_once(out, name, n_inputs, done_before)


def test_hq_killed_mid_run_then_resumed_is_exactly_once(tmp_path, tiny_llama_dir):
  require_vllm()
  n, out = 20, str(tmp_path / "out")
  cmd = _command("hq", write_docs(tmp_path / "docs.jsonl", n), out,
                 _backend_flags("vllm", tiny_llama_dir, None),
                 ["--max-attempts", "2", "--queries-per-doc", "1", "--min-doc-words", "5",
                  "--max-doc-words", "5000", "--min-query-words", "1"])
  _, rejects = _killed_then_resumed(cmd, out, "hq", n, tmp_path)
  check_long_input_rejected(rejects, "vllm")


# Wide buckets and short positives: an answer that keeps to the schema can become a row.
VL_FLAGS = ["--max-attempts", "1", "--buckets", "1-100,2-200", "--min-positive-words", "1",
            "--max-positive-words", "400"]
NEGATIVES_FLAGS = ["--max-attempts", "1", "--min-words", "1", "--max-words", "400",
                   "--max-overlap", "1.0"]


@pytest.mark.parametrize("backend", ["vllm-async", "openai"])
def test_vl_killed_mid_run_then_resumed_is_exactly_once(backend, tmp_path, tiny_llama_dir,
                                                        request):
  require_vllm()
  server = request.getfixturevalue("vllm_server") if backend == "openai" else None
  out = str(tmp_path / "out")
  cmd = _command("vl", write_docs(tmp_path / "docs.jsonl", N_INPUTS), out,
                 _backend_flags(backend, tiny_llama_dir, server), VL_FLAGS)
  manifest, rejects = _killed_then_resumed(cmd, out, "vl", N_INPUTS, tmp_path)
  check_long_input_rejected(rejects, backend)
  check_vl(manifest, rejects)


def test_negatives_killed_mid_run_then_resumed_is_exactly_once(tmp_path, vllm_server):
  require_vllm()
  out = str(tmp_path / "out")
  cmd = _command("negatives", write_rows(tmp_path / "rows.jsonl", N_INPUTS), out,
                 _backend_flags("openai", None, vllm_server), NEGATIVES_FLAGS)
  manifest, rejects = _killed_then_resumed(cmd, out, "negatives", N_INPUTS, tmp_path)
  check_long_input_rejected(rejects, "openai")
  check_negatives(out, manifest, rejects, "openai")
