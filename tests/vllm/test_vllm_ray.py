"""`python -m data_gen hq --engine ray` on a local Ray instance whose worker runs the `vllm`
backend (real vLLM, CPU build, its engine core a child process of the Ray worker). Once the first
batch is committed the test SIGKILLs that worker and its engine from outside; Ray reruns the
task on a fresh worker, which builds a new engine and skips what was committed, and the merged
output holds every input exactly once."""
import json
import os
import threading
import time

import pytest

from data_gen.cli import main
from reasonir_jax.data.reader import read_rows
from tests.vllm.datagen_util import LONG, write_docs
from tests.vllm.vllm_util import COMPACT_JSON, MAX_MODEL_LEN, require_vllm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_DOCS = 8


def _ray_worker(p) -> bool:
  # A Ray worker retitles itself `ray::<task>` (`ray::IDLE` between tasks).
  return "ray::" in " ".join(p.cmdline())


def _engines():
  """vLLM engine cores under this process whose parent is a Ray worker (the session's vLLM
  server, also a child of this process, runs an engine core too)."""
  import psutil
  found = []
  for p in psutil.Process().children(recursive=True):
    try:
      if "EngineCore" in p.name() and _ray_worker(p.parent()):
        found.append(p)
    except (psutil.NoSuchProcess, AttributeError):  # gone, or reparented (no parent)
      pass
  return found


@pytest.fixture(scope="module")
def local_ray():
  require_vllm()
  ray = pytest.importorskip(
      "ray", reason="Ray Data is missing: scripts/bootstrap_vllm.sh installs the cluster extra")
  import psutil
  # One CPU: one task, so one worker and one engine at a time (each engine is a few hundred MB
  # and a start of tens of seconds on this machine).
  ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"PYTHONPATH": REPO}})
  seen = []
  yield seen
  seen += _engines()
  ray.shutdown()
  # An engine core outlives a SIGKILLed parent only until it notices; never leave one behind.
  for p in seen:
    try:
      p.kill()
    except psutil.NoSuchProcess:
      pass


def _kill_worker_after_first_commit(parts_dir, killed, seen, stop):
  import psutil
  while not stop.is_set():
    if os.path.isdir(parts_dir) and any(n.startswith("part-") and n.endswith(".jsonl")
                                        for n in os.listdir(parts_dir)):
      engines = _engines()
      if engines:
        worker = engines[0].parent()
        killed.append({"worker": worker.pid, "title": " ".join(worker.cmdline()),
                       "parts": sorted(os.listdir(parts_dir))})
        seen.extend(engines)
        for p in (worker, *engines):
          try:
            p.kill()
          except psutil.NoSuchProcess:
            pass
        return
    time.sleep(0.05)


def test_engine_ray_with_a_killed_vllm_worker_is_exactly_once(local_ray, tmp_path,
                                                              tiny_llama_dir):
  inp = write_docs(tmp_path / "docs.jsonl", N_DOCS)
  out = str(tmp_path / "out")
  argv = ["hq", "--engine", "ray", "--no-filter", "--input", inp, "--output-dir", out,
          "--backend", "vllm", "--backend-model", tiny_llama_dir,
          "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.1",
          "--backend-dtype", "float32", "--backend-arg", "enforce_eager=True",
          "--backend-arg", f"structured_outputs_config={COMPACT_JSON!r}",
          "--max-tokens", "24", "--max-attempts", "1", "--queries-per-doc", "1",
          "--min-query-words", "1", "--batch-size", "2", "--log-level", "WARNING"]
  killed, stop = [], threading.Event()
  killer = threading.Thread(target=_kill_worker_after_first_commit,
                            args=(os.path.join(out, "_ray", "hq", "parts"), killed, local_ray,
                                  stop), daemon=True)
  killer.start()
  try:
    assert main(argv) == 0
  finally:
    stop.set()
    killer.join()
  assert killed, "no Ray worker with a vLLM engine was seen after the first commit"
  assert killed[0]["title"].startswith("ray::"), killed
  with open(os.path.join(out, "hq-shard00000of00001.manifest.json")) as f:
    manifest = json.load(f)
  # The kill came mid-run: the killed worker had committed only part of the input.
  committed_then = sum(1 for name in killed[0]["parts"] if name.endswith(".jsonl"))
  assert committed_then * 2 < N_DOCS
  parts = [n for n in os.listdir(os.path.join(out, "_ray", "hq", "parts")) if n.endswith(".jsonl")]
  assert len(parts) > committed_then  # a fresh worker (and engine) did the rest

  rows = list(read_rows(os.path.join(out, "hq-shard*.tfrecord")))
  with open(os.path.join(out, manifest["rejects_file"])) as f:
    rejects = {r["input_id"]: r for r in map(json.loads, f)}
  row_inputs = [r.row_id.split("/")[1] for r in rows]
  assert len(row_inputs) == len(set(row_inputs)) and not set(row_inputs) & set(rejects)
  assert sorted([*row_inputs, *rejects]) == sorted(f"d{i}" for i in range(N_DOCS))
  assert manifest["inputs"] == N_DOCS and manifest["rows"] == len(rows)
  assert rejects[LONG]["kind"] == "prompt_too_long", rejects[LONG]
  assert main(argv) == 0  # resume: everything is in a part, nothing is generated again
  with open(os.path.join(out, "hq-shard00000of00001.manifest.json")) as f:
    again = json.load(f)
  assert again["processed_this_run"] == 0 and again["inputs"] == N_DOCS
