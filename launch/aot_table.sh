#!/usr/bin/env bash
# Runs the ahead-of-time fit report for several TPU slices and prints a markdown table.
#
#   launch/aot_table.sh OUT.jsonl TOPOLOGY... [-- --config.x=y ...]
#
# Each report is a separate process (one libtpu topology per process); its JSON line is
# appended to OUT.jsonl with the overrides used. CONFIG (default configs/llama3_8b.py) and
# PYTHON (default python3, which needs the `tpu` extra installed) come from the environment.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/llama3_8b.py}"

if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
out="$1"
shift
topologies=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  topologies+=("$1")
  shift
done
overrides=()
if [[ $# -gt 0 ]]; then
  shift
  overrides=("$@")
fi

cd "${REPO_ROOT}"
for topology in "${topologies[@]}"; do
  echo "== ${topology} ${overrides[*]:-}" >&2
  status=0
  line="$("${PYTHON}" -m reasonir_jax.aot --config="${CONFIG}" --topology="${topology}" \
    "${overrides[@]}" | tail -n 1)" || status=$?
  if [[ "${status}" -ne 0 && "${status}" -ne 3 ]]; then
    echo "report for ${topology} failed (exit ${status})" >&2
    continue
  fi
  "${PYTHON}" -c 'import json, sys; r = json.loads(sys.argv[1]); r["overrides"] = sys.argv[2:]; print(json.dumps(r))' \
    "${line}" "${overrides[@]}" >> "${out}"
done

"${PYTHON}" - "${out}" <<'PY'
import json, sys
print("| topology | chips | mesh (data, fsdp, tensor) | overrides | per-chip GiB | HBM GiB | fits |")
print("|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
  r = json.loads(line)
  mesh = ", ".join(str(r["mesh"].get(a, 1)) for a in ("data", "fsdp", "tensor"))
  print(f"| {r['topology']} | {r['chips']} | {mesh} | {' '.join(r['overrides']) or '(recipe as is)'} "
        f"| {r['per_chip_bytes'] / 2**30:.1f} | {r['hbm_bytes'] / 2**30:.1f} | {'yes' if r['fits'] else 'no'} |")
PY
