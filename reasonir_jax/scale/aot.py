"""Ahead-of-time fit report: compile the real train step for a TPU slice on a CPU-only machine.

  python -m reasonir_jax.scale.aot --config=llama3_8b --topology=v5p-128 \
      [--config.train.grad_cache_chunk=128 ...] [--query_len=N] [--passage_len=N] [--num_slices=N]
      [--all_buckets]

Builds the trainer of `reasonir_jax.training.step` with the config's mesh, sharding rules, remat
policy and GradCache setting on the compile-only devices of the named TPU topology (libtpu from
the `tpu` extra; no TPU needed), lowers the train step on abstract inputs, compiles it and prints
per-chip memory (parameters, optimizer state, activations/temporaries, total) against the chip's
HBM, and the host memory the program holds (remat `offload`) against the host's RAM per chip
where known (tpu_topologies), with the analytic FLOPs and tokens per step. The last line printed
is one JSON object; it records the attention backend compiled (`config.model.attention`, `auto`
= splash on TPU), the git commit and the jax/jaxlib/libtpu versions. `--all_buckets` compiles
every (query, passage) bucket shape of `config.data.bucket_lengths` the run can meet and reports
the worst one.

Exit status: 0 fits, 3 does not fit (with a hint), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import contextlib
import re
import sys
import threading
import time
from typing import Any, Sequence

from reasonir_jax.configs import ConfigError, parse_config_flags, split_config_args
from reasonir_jax.configs import load_config  # noqa: F401 - tests and tools use aot.load_config
from reasonir_jax.scale import tpu_topologies

EXIT_FITS = 0
EXIT_BAD_ARGS = 2
EXIT_DOES_NOT_FIT = 3

# The TPU compiler's out-of-memory messages: the whole program ("Used 17.02G of 15.75G hbm") or
# its temporaries alone ("required for HLO temporaries (198.26G) exceeds available HBM (95.74G)").
_OOM_TOTAL_RE = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_OOM_TEMP_RE = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                          r"\(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class BadArgument(ValueError):
  pass


def _set_tpu_env(slice_: tpu_topologies.Slice) -> None:
  """Environment libtpu needs to describe a topology without a TPU; before jax is imported."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server off Cloud
  # Off a TPU VM libtpu cannot discover these and logs alarming errors; they do not change
  # what is compiled (the topology is given explicitly).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.gcloud_accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # The trainer's own arrays (none are materialised here) stay on the host platform.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(flags, config overrides). `--config.a.b=v` entries are overrides (reasonir_jax.configs:
  ml_collections.config_flags parses them), as in the trainer."""
  parser = argparse.ArgumentParser(
      prog="python -m reasonir_jax.scale.aot",
      description="Compile the train step for a TPU topology on CPU and report per-chip memory.")
  parser.add_argument("--config", required=True,
                      help="config file or name, e.g. llama3_8b or reasonir_jax/configs/llama3_8b.py")
  parser.add_argument("--topology", required=True,
                      help="TPU slice name, e.g. v5p-128, v5e-256, v6e-256, v4-64")
  parser.add_argument("--num_slices", type=int, default=1,
                      help="multi-slice: slices joined over DCN (config.mesh.dcn_shape spans "
                           "them; default the data axis)")
  parser.add_argument("--query_len", type=int, default=0,
                      help="query length (default: config.data.query_max_length)")
  parser.add_argument("--passage_len", type=int, default=0,
                      help="passage length (default: config.data.passage_max_length)")
  parser.add_argument("--all_buckets", action="store_true",
                      help="compile every (query, passage) bucket shape and report the worst")
  overrides, rest = split_config_args(argv)
  args = parser.parse_args(rest)  # exits 2 on unknown flags
  if args.num_slices < 1:
    raise BadArgument(f"--num_slices must be >= 1, got {args.num_slices}")
  for name in ("query_len", "passage_len"):
    if getattr(args, name) < 0:
      raise BadArgument(f"--{name} must be positive, got {getattr(args, name)}")
  return args, overrides


def topology_devices(slice_: tpu_topologies.Slice, num_slices: int = 1) -> list:
  """Compile-only TPU devices of the slice(s), from libtpu's topology description."""
  try:
    import libtpu  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    raise RuntimeError("libtpu is not installed: pip install -e '.[tpu]' (or "
                       "'jax[tpu]==<your jax version>') to compile for TPU topologies") from None
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  desc = topologies.get_topology_desc(
      topology_name=slice_.topology_name, platform="tpu",
      chip_config_name=slice_.chip.chip_config_name,
      chips_per_host_bounds=slice_.chips_per_host_bounds,
      num_slices=num_slices, wrap=slice_.wrap)
  devices = list(desc.devices)
  if len(devices) != slice_.chips * num_slices:
    raise RuntimeError(f"libtpu described {len(devices)} devices for {slice_.name} x{num_slices}, "
                       f"expected {slice_.chips * num_slices}")
  return devices


def build_mesh(config, devices: list, num_slices: int = 1):
  """The trainer's mesh (`sharding.make_mesh`, `config.mesh.shape` within each slice and
  `config.mesh.dcn_shape` across slices) on the topology's devices."""
  from reasonir_jax import sharding  # pylint: disable=import-outside-toplevel
  found = len({getattr(d, "slice_index", 0) for d in devices})
  if found != num_slices:
    raise RuntimeError(f"libtpu described devices in {found} slices, expected {num_slices}")
  return sharding.make_mesh(config.mesh, devices)


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs/arrays with shardings (max over devices)."""
  import jax  # pylint: disable=import-outside-toplevel
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None and shape:
      shape = tuple(sharding.shard_shape(shape))
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def split_state_bytes(state: Any) -> dict[str, int]:
  """Per-device bytes of the train state split into parameters, optimizer state and the rest.

  Works on a dict/dataclass/pytree state by path: a leaf under a key containing "opt" is
  optimizer state, one under "param"/"model" is a parameter.
  """
  import jax  # pylint: disable=import-outside-toplevel
  out = {"params": 0, "opt_state": 0, "other_state": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))).lower()
             for k in path]
    head = names[0] if names else ""
    nbytes = per_device_bytes(leaf)
    if "opt" in head:
      out["opt_state"] += nbytes
    elif "param" in head or "model" in head:
      out["params"] += nbytes
    else:
      out["other_state"] += nbytes
  return out


def parse_oom(message: str) -> tuple[str, int, int] | None:
  """("total" | "temp", bytes needed, usable HBM bytes) from a TPU compiler OOM error, else None."""
  for kind, regex in (("total", _OOM_TOTAL_RE), ("temp", _OOM_TEMP_RE)):
    m = regex.search(message)
    if m:
      needed = float(m.group(1)) * _UNITS[m.group(2)]
      capacity = float(m.group(3)) * _UNITS[m.group(4)]
      return kind, int(needed), int(capacity)
  return None


@contextlib.contextmanager
def _heartbeat(what: str, every_s: float = 60.0):
  """Logs `what` with the elapsed time every `every_s` seconds (an 8B compile takes minutes)."""
  start, done = time.time(), threading.Event()

  def beat():
    while not done.wait(every_s):
      print(f"[aot] still {what} ({time.time() - start:.0f}s)", file=sys.stderr, flush=True)

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


def provenance() -> dict[str, str]:
  """The code and compiler a report was measured with: git commit, jax/jaxlib/libtpu versions."""
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  out = {}
  try:
    out["git_commit"] = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
        text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    out["git_commit"] = "unknown"
  for package in ("jax", "jaxlib", "libtpu"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "not installed"
  return out


def _fmt(nbytes: float) -> str:
  if nbytes >= 1024**3:
    return f"{nbytes / 1024**3:8.2f} GiB"
  return f"{nbytes / 1024**2:8.2f} MiB"


def _hint(config, slice_: tpu_topologies.Slice, mesh_shape: dict,
          memory: dict | None = None) -> str:
  """What to change when the step does not fit: remat, GradCache chunk, a bigger slice."""
  bigger = [s for s in tpu_topologies.SLICES.values()
            if s.chip is slice_.chip and s.chips > slice_.chips]
  next_slice = min(bigger, key=lambda s: s.chips).name if bigger else None
  batch_ways = max(math.prod(mesh_shape.get(a, 1) for a in ("data", "fsdp")), 1)
  chunk = int(config.train.grad_cache_chunk)
  policy = config.model.remat_policy
  lines = ["does not fit. Try one of:"]
  if memory is not None and not host_fits(memory, slice_):
    lines.append(f"  host memory is short: --config.model.remat_policy=full keeps the layer "
                 f"inputs in HBM (now {policy!r})")
  elif policy == "full":
    lines.append("  offload:      --config.model.remat_policy=offload (layer inputs in host "
                 "memory; now 'full')")
  elif policy != "offload":
    lines.append(f"  more remat:   --config.model.remat_policy=full (now {policy!r})")
  if chunk == 0:
    lines.append(f"  GradCache:    --config.train.grad_cache_chunk={batch_ways} (or a larger "
                 f"multiple of the {batch_ways} batch shards that divides the batch)")
  elif chunk // 2 >= batch_ways and (chunk // 2) % batch_ways == 0:
    lines.append(f"  smaller GradCache chunk: --config.train.grad_cache_chunk={chunk // 2} "
                 f"(now {chunk})")
  if next_slice:
    lines.append(f"  more chips:   --topology={next_slice}")
  return "\n".join(lines)


def run_report(config, slice_: tpu_topologies.Slice, num_slices: int = 1,
               query_len: int = 0, passage_len: int = 0, log=print) -> dict:
  """Compiles the train step for the topology; returns the report (see the module docstring)."""
  from reasonir_jax.training import flops  # pylint: disable=import-outside-toplevel
  from reasonir_jax.training.step import build_trainer  # pylint: disable=import-outside-toplevel

  query_len = query_len or int(config.data.query_max_length)
  passage_len = passage_len or int(config.data.passage_max_length)
  chips = slice_.chips * num_slices
  t0 = time.time()
  devices = topology_devices(slice_, num_slices)
  mesh = build_mesh(config, devices, num_slices)
  mesh_shape = dict(mesh.shape)
  log(f"[aot] {slice_.name} x{num_slices}: {chips} chips ({devices[0].device_kind}), "
      f"mesh {mesh_shape}, remat={config.model.remat_policy}, "
      f"grad_cache_chunk={config.train.grad_cache_chunk}, lengths q={query_len} p={passage_len}")

  trainer = build_trainer(config, mesh)
  state = trainer.abstract_state()
  batch = trainer.abstract_batch(query_len, passage_len)
  log(f"[aot] lowering the train step ({time.time() - t0:.1f}s)")
  lowered = trainer.train_step.lower(state, batch)
  # Pallas kernels (splash attention) lower to Mosaic custom calls: a count of 0 on TPU means
  # attention fell back to XLA.
  kernel_calls = lowered.as_text().count("tpu_custom_call")
  log(f"[aot] compiling for {slice_.topology_name} ({time.time() - t0:.1f}s)")

  state_bytes = split_state_bytes(state)
  batch_bytes = per_device_bytes(batch)
  hbm = slice_.hbm_bytes
  memory: dict[str, int] = dict(state_bytes, batch=batch_bytes)
  try:
    with _heartbeat(f"compiling for {slice_.name}"):
      compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    oom = parse_oom(str(e))
    if oom is None:
      raise
    # The compiler counts usable HBM slightly differently from the spec sheet; the report keeps
    # the spec sheet's figure so that rows of one chip compare.
    kind, needed, usable = oom
    log(f"[aot] the TPU compiler ran out of HBM ({usable / 1024**3:.2f} GiB usable): "
        f"{str(e).splitlines()[0][:300]}")
    inputs = sum(memory.values())
    if kind == "total":
      memory.update(activations_temp=max(needed - inputs, 0), total=needed)
    else:
      memory.update(activations_temp=needed, total=needed + inputs)
  else:
    ma = compiled.memory_analysis()
    outputs = max(ma.output_size_in_bytes - ma.alias_size_in_bytes, 0)
    memory.update(activations_temp=int(ma.temp_size_in_bytes), outputs_not_donated=int(outputs),
                  code=int(ma.generated_code_size_in_bytes))
    # Host memory the program uses per chip (remat_policy=offload keeps layer inputs there).
    host = int(getattr(ma, "host_temp_size_in_bytes", 0) or 0)
    if host:
      memory["host_temp"] = host
    memory["total"] = int(ma.argument_size_in_bytes + outputs + ma.temp_size_in_bytes
                          + ma.generated_code_size_in_bytes)
  log(f"[aot] compile finished after {time.time() - t0:.1f}s")

  group = int(config.data.group_size)
  batch_size = int(config.train.global_batch_size)
  step_flops = flops.train_step_flops(config.model, batch_size, query_len, passage_len, group)
  from reasonir_jax.model.attention import resolve_implementation  # pylint: disable=import-outside-toplevel
  attention = resolve_implementation(str(config.model.attention), "tpu")
  hardware_flops = flops.hardware_step_flops(config.model, batch_size, query_len, passage_len,
                                             group, int(config.train.grad_cache_chunk),
                                             attention=attention)
  tokens = flops.tokens_per_step(batch_size, query_len, passage_len, group)
  return {
      "topology": slice_.name if num_slices == 1 else f"{num_slices}x{slice_.name}",
      "chips": chips,
      "query_len": query_len,
      "passage_len": passage_len,
      "grad_cache_chunk": int(config.train.grad_cache_chunk),
      "attention": attention,
      "kernel_calls": kernel_calls,
      "per_chip_bytes": int(memory["total"]),
      "hbm_bytes": int(hbm),
      "host_bytes_per_chip": slice_.chip.host_bytes_per_chip,
      "fits": bool(memory["total"] <= hbm) and host_fits(memory, slice_),
      "flops_per_step": float(step_flops),
      "hardware_flops_per_step": float(hardware_flops),
      "tokens_per_step": int(tokens),
      "mesh": mesh_shape,
      "memory": memory,
      "compile_seconds": round(time.time() - t0, 1),
  }


def worst_bucket_report(config, slice_: tpu_topologies.Slice, num_slices: int = 1,
                        log=print) -> dict:
  """Compiles every bucket shape; the report of the one needing the most memory per chip, with
  all shapes' totals under "buckets"."""
  from reasonir_jax.training.step import step_shapes  # pylint: disable=import-outside-toplevel
  reports = []
  for q, p in step_shapes(config):
    reports.append(run_report(config, slice_, num_slices, q, p, log=log))
    log(f"[aot] bucket q={q} p={p}: {reports[-1]['per_chip_bytes'] / 2**30:.2f} GiB per chip")
  worst = dict(max(reports, key=lambda r: r["per_chip_bytes"]))
  worst["buckets"] = [{"query_len": r["query_len"], "passage_len": r["passage_len"],
                       "per_chip_bytes": r["per_chip_bytes"], "fits": r["fits"]}
                      for r in reports]
  worst["fits"] = all(r["fits"] for r in reports)
  worst["compile_seconds"] = round(sum(r["compile_seconds"] for r in reports), 1)
  return worst


def host_fits(memory: dict, slice_: tpu_topologies.Slice) -> bool:
  """Whether the host memory the program holds per chip (remat `offload`) fits the host's RAM
  share of one chip; True where that RAM is not known (tpu_topologies)."""
  limit = slice_.chip.host_bytes_per_chip
  return limit is None or memory.get("host_temp", 0) <= limit


def print_report(report: dict, config, slice_: tpu_topologies.Slice) -> None:
  mem = report["memory"]
  rows = [("parameters", mem.get("params")), ("optimizer state", mem.get("opt_state")),
          ("other state", mem.get("other_state")), ("batch", mem.get("batch")),
          ("activations/temporaries", mem.get("activations_temp")),
          ("outputs (not donated)", mem.get("outputs_not_donated")),
          ("program code", mem.get("code"))]
  print(f"Per-chip memory on {report['topology']} ({report['chips']} chips, mesh "
        f"{report['mesh']}):")
  for name, value in rows:
    # After a compiler out-of-memory error some parts are unknown.
    print(f"  {name:<26}{_fmt(value) if value is not None else '         n/a'}")
  print(f"  {'total':<26}{_fmt(report['per_chip_bytes'])}   of {_fmt(report['hbm_bytes'])} HBM "
        f"({100.0 * report['per_chip_bytes'] / report['hbm_bytes']:.0f}%)")
  if mem.get("host_temp"):
    limit = report.get("host_bytes_per_chip")
    print(f"  {'host memory':<26}{_fmt(mem['host_temp'])}   of "
          + (f"{_fmt(limit)} host RAM per chip ({100.0 * mem['host_temp'] / limit:.0f}%)"
             if limit else "an unknown host RAM per chip (not checked)"))
  per_chip_flops = report["flops_per_step"] / report["chips"]
  print(f"Model FLOPs per step: {report['flops_per_step']:.4g} "
        f"({per_chip_flops:.4g} per chip; at peak bf16 "
        f"{per_chip_flops / slice_.chip.peak_bf16_flops:.2f} s/step, 40% MFU "
        f"{per_chip_flops / (0.4 * slice_.chip.peak_bf16_flops):.2f} s/step)")
  print(f"Tokens per step (padded): {report['tokens_per_step']}; attention: {report['attention']}; "
        f"lengths q={report['query_len']} p={report['passage_len']}"
        + (f" (the worst of {len(report['buckets'])} bucket shapes)" if "buckets" in report else ""))
  if not report["fits"]:
    print(_hint(config, slice_, report["mesh"], report["memory"]))


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args, overrides = parse_args(argv)
    slice_ = tpu_topologies.get_slice(args.topology)
    # Before the config: loading it imports the model, and with it jax, which reads these.
    _set_tpu_env(slice_)
    config = parse_config_flags(args.config, overrides)
  except (BadArgument, ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_ARGS
  try:
    if args.all_buckets:
      report = worst_bucket_report(config, slice_, args.num_slices)
    else:
      report = run_report(config, slice_, args.num_slices, args.query_len, args.passage_len)
    report.update(provenance())
  except (BadArgument, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_ARGS
  except ValueError as e:
    # Mesh/batch/chunk checks of the config against this topology (e.g. mesh.shape, GradCache).
    print(f"error: config does not suit {slice_.name}: {e}", file=sys.stderr)
    return EXIT_BAD_ARGS
  except RuntimeError as e:
    if "libtpu" in str(e):
      print(f"error: {e}", file=sys.stderr)
      return EXIT_BAD_ARGS
    raise
  print_report(report, config, slice_)
  sys.stdout.flush()
  print(json.dumps(report, sort_keys=False))
  return EXIT_FITS if report["fits"] else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
  sys.exit(main())
