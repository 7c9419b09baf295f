"""Peak driver memory of the Ray engine's merge (data_gen.ray_engine), before and after it streamed.

    python bench/datagen_ray_merge.py [--inputs 20000] [--rows-per-input 4] [--words 300]

Writes synthetic committed part files (as the Ray workers do, a few duplicates included) and
merges them in a fresh process per engine, printing each one's peak RSS:

- before: the previous merge: every outcome read into a dict, rows sorted by input id and
  written from a list;
- after: one streaming pass; rows go straight to the TFRecord writer, the driver keeps only the
  ids it has seen.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_parts(parts_dir: str, inputs: int, rows_per_input: int, words: int) -> None:
  os.makedirs(parts_dir, exist_ok=True)
  text = " ".join(f"word{i % 97}" for i in range(words))
  per_part = 64
  for start in range(0, inputs, per_part):
    with open(os.path.join(parts_dir, f"part-{start:08d}.jsonl"), "w", encoding="utf-8") as f:
      for i in range(start, min(inputs, start + per_part)):
        rows = [{"row_id": f"hq/d{i}/{k}", "source": "hq", "query": f"query {i} {k}",
                 "positives": [text], "negatives": [text]} for k in range(rows_per_input)]
        f.write(json.dumps({"input_id": f"d{i}", "rows": rows, "reject": None,
                            "steps": {"queries": {"attempts": 1, "ok": True}}}) + "\n")
  # A rerun task's second commit of the first part: the merge must drop it.
  with open(os.path.join(parts_dir, "part-00000000.jsonl"), encoding="utf-8") as f:
    dup = f.read()
  with open(os.path.join(parts_dir, "part-zzzzzzzz.jsonl"), "w", encoding="utf-8") as f:
    f.write(dup)


def merge_in_memory(parts_dir, stage_dir, output_dir, base, write_rows) -> dict:
  """The previous merge (for comparison): all outcomes held on the driver."""
  from data_gen.ray_engine import _read_parts
  from reasonir_jax.data.schema import TrainingRow
  outcomes: dict = {}
  for input_id, rec in _read_parts(parts_dir):
    outcomes.setdefault(input_id, rec)
  ids = sorted(outcomes)
  rows = [TrainingRow(**r) for i in ids for r in outcomes[i]["rows"]]
  write_rows(rows, output_dir, base, 1)
  return {"inputs": len(ids), "rows": len(rows)}


def run_one(mode: str, parts_dir: str, output_dir: str) -> None:
  from data_gen.ray_engine import _merge
  from reasonir_jax.data.writer import write_rows
  stage_dir = os.path.join(output_dir, "_stage", mode)
  os.makedirs(stage_dir, exist_ok=True)
  started = time.time()
  if mode == "before":
    result = merge_in_memory(parts_dir, stage_dir, output_dir, mode, write_rows)
  else:
    result = _merge(parts_dir, stage_dir, output_dir, mode, "hq", 0, 0, started, 1, write_rows)
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  print(json.dumps({"mode": mode, "inputs": result["inputs"], "rows": result["rows"],
                    "peak_rss_mib": round(peak_mib, 1),
                    "seconds": round(time.time() - started, 2)}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--inputs", type=int, default=20000)
  parser.add_argument("--rows-per-input", type=int, default=4)
  parser.add_argument("--words", type=int, default=300, help="words per positive and negative")
  parser.add_argument("--mode", choices=["before", "after"], default=None, help=argparse.SUPPRESS)
  parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.mode:
    run_one(args.mode, os.path.join(args.dir, "parts"), args.dir)
    return
  with tempfile.TemporaryDirectory() as tmp:
    write_parts(os.path.join(tmp, "parts"), args.inputs, args.rows_per_input, args.words)
    size = sum(os.path.getsize(os.path.join(tmp, "parts", p))
               for p in os.listdir(os.path.join(tmp, "parts")))
    print(f"parts: {size / 2**20:.0f} MiB, {args.inputs} inputs x {args.rows_per_input} rows")
    results = {}
    for mode in ("before", "after"):
      out = subprocess.run([sys.executable, __file__, "--mode", mode, "--dir", tmp],
                           check=True, capture_output=True, text=True).stdout
      results[mode] = json.loads(out.strip().splitlines()[-1])
      print(out.strip())
    assert results["before"]["rows"] == results["after"]["rows"]
    print(f"driver peak RSS: {results['before']['peak_rss_mib']} MiB before, "
          f"{results['after']['peak_rss_mib']} MiB after "
          f"(x{results['before']['peak_rss_mib'] / results['after']['peak_rss_mib']:.1f} less)")


if __name__ == "__main__":
  main()
