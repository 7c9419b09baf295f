"""Planning the corpus encoding of a BRIGHT run: the device mesh, and the projected wall time.

- Mesh: an embedding model is served best by pure data parallelism (every chip holds the whole
  model and encodes its own share of each batch, no collectives in the forward pass) whenever the
  weights fit one chip; only a model too large for one chip is sharded over `fsdp`.
- Wall time: a measured encode rate (documents/s on the devices present) times the corpus sizes of
  the 12 tasks, counting a corpus shared by several tasks once (their cache entry is keyed by the
  corpus content, so aops and theoremqa_questions encode 188,177 documents once).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time

log = logging.getLogger(__name__)

# Documents per task in BRIGHT's `documents` split (BRIGHT paper, table 1; aops and
# theoremqa_questions share one corpus of 188,177 documents in the released data).
BRIGHT_CORPUS_SIZES = {
    "biology": 57_359, "earth_science": 121_249, "economics": 50_220, "psychology": 52_835,
    "robotics": 61_961, "stackoverflow": 107_081, "sustainable_living": 60_792,
    "leetcode": 413_932, "pony": 7_894, "aops": 188_177, "theoremqa_theorems": 23_839,
    "theoremqa_questions": 188_177,
}
SHARED_CORPORA = (("aops", "theoremqa_questions"),)

def safetensors_parameter_count(model_dir: str) -> int | None:
  """Parameters stored in a Hugging Face directory's safetensors files (headers only), or None."""
  from reasonir_jax.hf.safetensors_io import SafetensorsFile  # pylint: disable=import-outside-toplevel
  files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
  if not files:
    return None
  total = 0
  for path in files:
    f = SafetensorsFile(path)
    total += sum(math.prod(f.shape(name)) for name in f.names())
  return total


def device_memory_bytes(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def auto_mesh_shape(num_params: int | None, dtype_bytes: int, device_bytes: int | None,
                    headroom: float = 0.5) -> str:
  """"-1,1,1" (pure data parallelism) when the weights take at most `headroom` of one chip's
  memory (the rest is for activations); "1,-1,1" (weights sharded over every chip) otherwise.
  Unknown memory (CPU hosts) counts as fitting; an unknown model size as not fitting."""
  if num_params is None:
    return "1,-1,1"
  if device_bytes is None or num_params * dtype_bytes <= headroom * device_bytes:
    return "-1,1,1"
  return "1,-1,1"


def resolve_mesh(mesh: str, model_path: str, dtype: str) -> str:
  """`--mesh auto` resolved for this model and the first local device; other values unchanged."""
  if mesh != "auto":
    return mesh
  import jax
  num_params = safetensors_parameter_count(model_path) if os.path.isdir(model_path) else None
  dtype_bytes = 4 if dtype in ("float32", "fp32") else 2
  device_bytes = device_memory_bytes(jax.local_devices()[0])
  shape = auto_mesh_shape(num_params, dtype_bytes, device_bytes)
  log.info("--mesh auto: %s parameters, %s bytes per device -> mesh %s (%s)", num_params, device_bytes,
           shape, "data parallel" if shape.startswith("-1") else "weights sharded")
  return shape


class EncodeMeter:
  """Accumulates (documents, seconds) of corpus encoding calls, for a measured rate."""

  def __init__(self):
    self.calls: list[tuple[int, float]] = []

  @contextlib.contextmanager
  def timing(self, num_texts: int):
    t0 = time.perf_counter()
    yield
    self.calls.append((num_texts, time.perf_counter() - t0))

  def rate(self) -> float | None:
    """Documents per second; the first call (it pays the compilations) is left out when there are
    later ones."""
    calls = self.calls[1:] if len(self.calls) > 1 else self.calls
    docs, secs = sum(c[0] for c in calls), sum(c[1] for c in calls)
    return docs / secs if docs and secs > 0 else None


METER = EncodeMeter()


def projected_seconds(docs_per_s: float, sizes: dict[str, int] | None = None,
                      tasks=None) -> tuple[dict[str, float], float]:
  """Per-task encoding seconds (0 for a task whose corpus another listed task already encoded)
  and the total."""
  sizes = dict(BRIGHT_CORPUS_SIZES, **(sizes or {}))
  tasks = list(tasks or BRIGHT_CORPUS_SIZES)
  shared_with = {b: a for group in SHARED_CORPORA for a in group for b in group if a != b}
  out, done = {}, set()
  for task in tasks:
    other = shared_with.get(task)
    out[task] = 0.0 if other in done else sizes[task] / docs_per_s
    done.add(task)
  return out, sum(out.values())


def _hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def format_projection(docs_per_s: float, devices: str, sizes: dict[str, int] | None = None) -> str:
  """A table of the projected corpus-encoding wall time of all 12 BRIGHT tasks."""
  per_task, total = projected_seconds(docs_per_s, sizes)
  sizes = dict(BRIGHT_CORPUS_SIZES, **(sizes or {}))
  lines = [f"Projected corpus encoding for all 12 BRIGHT tasks on {devices} at a measured "
           f"{docs_per_s:.1f} documents/s (assumes the measured documents' length mix):"]
  for task, secs in per_task.items():
    note = " (shared corpus: cached)" if secs == 0.0 else ""
    lines.append(f"  {task:<20} {sizes[task]:>8,} docs  {_hms(secs)}{note}")
  lines.append(f"  {'total':<20} {sum(s for t, s in sizes.items() if per_task.get(t)):>8,} docs  "
               f"{_hms(total)}")
  return "\n".join(lines)


def describe_devices() -> str:
  import jax
  devices = jax.devices()
  return f"{len(devices)} x {devices[0].device_kind}"
