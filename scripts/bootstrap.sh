#!/usr/bin/env bash
# Creates ./.venv (once) and installs the package with the test extra; skips the install when
# setup.py has not changed since the last one. Set EXTRAS=test,tpu for the TPU compiler too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-$(cat setup.py | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "installing reasonir-jax[$EXTRAS] into .venv (log: .venv/install.log)"
  # torch first, pinned, so nothing else can pull a CUDA build.
  if ! { .venv/bin/python -m pip install "torch==2.13.0" &&
         .venv/bin/python -m pip install -e ".[$EXTRAS]"; } > .venv/install.log 2>&1; then
    tail -40 .venv/install.log
    echo "install failed; full log in .venv/install.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
