#!/usr/bin/env bash
# Regenerates the scaling table of docs/scaling.md: one ahead-of-time fit report per row, then
# the markdown table (python -m reasonir_jax.scale.aot_table; see its --help).
#
#   launch/aot_table.sh docs/scaling_8b.jsonl                      # every row of the table
#   launch/aot_table.sh OUT.jsonl --rows v5p-128:0 2xv5p-64:32 [-- --config.x=y ...]
#   launch/aot_table.sh OUT.jsonl --rows 'v5p-128:0 --config.data.packing=True'   # a row's own overrides
#   launch/aot_table.sh OUT.jsonl --rows 'v5p-128:64 --config=reasonir_jax/configs/qwen3_8b.py'
#   launch/aot_table.sh docs/scaling_8b.jsonl --render             # print the table only
#
# CONFIG (default reasonir_jax/configs/llama3_8b.py; the config of rows without their own
# --config=FILE) and PYTHON (default python3, which needs the `tpu` extra installed) come from the
# environment.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ $# -lt 1 ]]; then
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
cd "${REPO_ROOT}"
exec "${PYTHON}" -m reasonir_jax.scale.aot_table "$@"
