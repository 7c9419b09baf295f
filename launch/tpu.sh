#!/usr/bin/env bash
# Runs a reasonir_jax training job on a Cloud TPU slice: create it, install the package on every
# worker, start the same training command on all workers, gather per-worker logs, delete it.
#
#   launch/tpu.sh [--dry-run] COMMAND
#
# Commands:
#   create   create the slice: a TPU VM, or a queued resource (QUEUED=1, always for NUM_SLICES>1)
#   wait     wait until a queued resource is ACTIVE
#   setup    copy this checkout (or clone GIT_URL) to every worker and pip install it with [tpu]
#   train    start the training command on all workers, detached; each worker logs to a file
#   logs     gather every worker's log into LOG_DIR/<node>/worker-<i>.log
#   ssh      run CMD on all workers, or on WORKER=i (e.g. CMD='tail -n 5 reasonir-run/train.log')
#   status   describe the slice
#   delete   delete the slice (and the queued resource)
#   up       create, wait, setup, train
#
# Settings come from the environment or from ENV_FILE (see launch/env.example):
#   PROJECT, ZONE (required); TPU_NAME, ACCELERATOR_TYPE (v5p-128), RUNTIME_VERSION (per chip),
#   NUM_SLICES (1), QUEUED (0), SPOT (0), CONFIG (configs/llama3_8b.py), WORKDIR (gs://...,
#   required by train), TRAIN_ARGS (extra --config.x=y overrides), GIT_URL/GIT_REF, LOG_DIR.
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "launch/tpu.sh: error: $*" >&2
  exit 2
}

# Prints the command (dry run), quoted so it can be pasted into a shell, or runs it.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    local arg line="+"
    for arg in "$@"; do
      if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
        line+=" ${arg}"
      else
        line+=" '${arg//\'/\'\\\'\'}'"
      fi
    done
    echo "${line}"
  else
    "$@"
  fi
}

# One field of the slice table in reasonir_jax/tpu_topologies.py (hosts, runtime_version, ...).
slice_field() {
  (cd "${REPO_ROOT}" && "${PYTHON}" -m reasonir_jax.tpu_topologies "${ACCELERATOR_TYPE}" "$1")
}

load_settings() {
  if [[ -n "${ENV_FILE:-}" ]]; then
    [[ -f "${ENV_FILE}" ]] || die "ENV_FILE=${ENV_FILE} does not exist"
    # shellcheck source=launch/env.example
    source "${ENV_FILE}"
  fi
  [[ -n "${PROJECT:-}" ]] || die "PROJECT is not set (the Google Cloud project id)"
  [[ -n "${ZONE:-}" ]] || die "ZONE is not set (e.g. us-east5-a for v5p, us-east1-d for v6e)"
  TPU_NAME="${TPU_NAME:-reasonir-${USER:-user}}"
  ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-128}"
  NUM_SLICES="${NUM_SLICES:-1}"
  QUEUED="${QUEUED:-0}"
  SPOT="${SPOT:-0}"
  CONFIG="${CONFIG:-configs/llama3_8b.py}"
  WORKDIR="${WORKDIR:-}"
  TRAIN_ARGS="${TRAIN_ARGS:-}"
  GIT_URL="${GIT_URL:-}"
  GIT_REF="${GIT_REF:-main}"
  LOG_DIR="${LOG_DIR:-logs/${TPU_NAME}}"
  REMOTE_DIR="reasonir-jax"   # under each worker's home
  REMOTE_RUN="reasonir-run"   # logs and pid of the training process on each worker
  [[ "${NUM_SLICES}" =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=${NUM_SLICES} is not a positive integer"
  HOSTS="$(slice_field hosts)" || die "ACCELERATOR_TYPE=${ACCELERATOR_TYPE} is not a known slice"
  GCLOUD_TYPE="$(slice_field gcloud_accelerator_type)"
  RUNTIME_VERSION="${RUNTIME_VERSION:-$(slice_field runtime_version)}"
  if [[ "${NUM_SLICES}" -gt 1 ]]; then
    QUEUED=1
  fi
  GCLOUD_SCOPE=(--project="${PROJECT}" --zone="${ZONE}")
}

# TPU VM names: the slice itself, or <TPU_NAME>-0 .. -<N-1> for a multi-slice queued resource.
node_names() {
  if [[ "${NUM_SLICES}" -gt 1 ]]; then
    local i
    for ((i = 0; i < NUM_SLICES; i++)); do
      echo "${TPU_NAME}-${i}"
    done
  else
    echo "${TPU_NAME}"
  fi
}

# Runs $1 on every worker of every node (or on worker $2 only).
ssh_all() {
  local node
  for node in $(node_names); do
    run gcloud compute tpus tpu-vm ssh "${node}" "${GCLOUD_SCOPE[@]}" --worker="${2:-all}" \
      --command="$1"
  done
}

cmd_create() {
  local extra=()
  if [[ "${SPOT}" == "1" ]]; then
    extra+=(--spot)
  fi
  if [[ "${QUEUED}" == "1" ]]; then
    if [[ "${NUM_SLICES}" -gt 1 ]]; then
      extra+=(--node-count="${NUM_SLICES}" --node-prefix="${TPU_NAME}")
    else
      extra+=(--node-id="${TPU_NAME}")
    fi
    run gcloud compute tpus queued-resources create "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" \
      --accelerator-type="${GCLOUD_TYPE}" --runtime-version="${RUNTIME_VERSION}" "${extra[@]}"
  else
    run gcloud compute tpus tpu-vm create "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" \
      --accelerator-type="${GCLOUD_TYPE}" --version="${RUNTIME_VERSION}" "${extra[@]}"
  fi
}

cmd_wait() {
  [[ "${QUEUED}" == "1" ]] || return 0
  local describe=(gcloud compute tpus queued-resources describe "${TPU_NAME}" "${GCLOUD_SCOPE[@]}"
    --format='value(state.state)')
  if [[ "${DRY_RUN}" == "1" ]]; then
    run "${describe[@]}"
    return 0
  fi
  local state=""
  while [[ "${state}" != "ACTIVE" ]]; do
    state="$("${describe[@]}")"
    echo "$(date -u +%H:%M:%S) queued resource ${TPU_NAME}: ${state}"
    case "${state}" in
      FAILED | SUSPENDED) die "queued resource ${TPU_NAME} is ${state}" ;;
      ACTIVE) ;;
      *) sleep 30 ;;
    esac
  done
}

cmd_setup() {
  local install="cd ~/${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"
  if [[ -n "${GIT_URL}" ]]; then
    ssh_all "rm -rf ~/${REMOTE_DIR} && git clone --depth=1 --branch=${GIT_REF} ${GIT_URL} ~/${REMOTE_DIR} && ${install}"
    return 0
  fi
  local tarball
  tarball="${TMPDIR:-/tmp}/reasonir-jax-$$.tar.gz"
  run tar -czf "${tarball}" -C "${REPO_ROOT}" --exclude=.git --exclude='.venv*' \
    --exclude=__pycache__ --exclude=logs --exclude=workdir .
  local node
  for node in $(node_names); do
    run gcloud compute tpus tpu-vm scp "${tarball}" "${node}:reasonir-jax.tar.gz" \
      "${GCLOUD_SCOPE[@]}" --worker=all
  done
  ssh_all "rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/reasonir-jax.tar.gz -C ~/${REMOTE_DIR} && ${install}"
  run rm -f "${tarball}"
}

train_command() {
  [[ -n "${WORKDIR}" ]] || die "WORKDIR is not set (a gs:// path for checkpoints and TensorBoard)"
  [[ "${WORKDIR}" == gs://* ]] || echo "launch/tpu.sh: warning: WORKDIR=${WORKDIR} is not a gs:// path; every worker will write its own local copy" >&2
  # Every worker runs the same command; --multihost makes the trainer call
  # jax.distributed.initialize(), which finds the other workers from the TPU metadata.
  # Detached (nohup), so a dropped SSH session does not stop training.
  echo "mkdir -p ~/${REMOTE_RUN} && cd ~/${REMOTE_DIR} && JAX_COMPILATION_CACHE_DIR=${WORKDIR}/jax_cache nohup .venv/bin/python -m reasonir_jax.train --config=${CONFIG} --workdir=${WORKDIR} --multihost ${TRAIN_ARGS} > ~/${REMOTE_RUN}/train.log 2>&1 < /dev/null & echo \$! > ~/${REMOTE_RUN}/train.pid"
}

cmd_train() {
  local command
  command="$(train_command)"
  if [[ "${NUM_SLICES}" -gt 1 ]]; then
    # Multi-slice: the queued resource's ssh reaches every node; libtpu joins the slices over DCN.
    run gcloud compute tpus queued-resources ssh "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" \
      --node=all --worker=all --command="${command}"
  else
    ssh_all "${command}"
  fi
  echo "started on ${NUM_SLICES} x ${HOSTS} workers; gather logs with: launch/tpu.sh logs" >&2
}

cmd_logs() {
  local node i
  for node in $(node_names); do
    run mkdir -p "${LOG_DIR}/${node}"
    for ((i = 0; i < HOSTS; i++)); do
      run gcloud compute tpus tpu-vm scp "${node}:${REMOTE_RUN}/train.log" \
        "${LOG_DIR}/${node}/worker-${i}.log" "${GCLOUD_SCOPE[@]}" --worker="${i}"
    done
  done
}

cmd_ssh() {
  [[ -n "${CMD:-}" ]] || die "CMD is not set (the command to run on every worker)"
  ssh_all "${CMD}" "${WORKER:-all}"
}

cmd_status() {
  if [[ "${QUEUED}" == "1" ]]; then
    run gcloud compute tpus queued-resources describe "${TPU_NAME}" "${GCLOUD_SCOPE[@]}"
  else
    run gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${GCLOUD_SCOPE[@]}"
  fi
}

cmd_delete() {
  if [[ "${QUEUED}" == "1" ]]; then
    # --force deletes the TPU VMs of the queued resource too.
    run gcloud compute tpus queued-resources delete "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" --quiet
  fi
}

main() {
  local command=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown flag $1 (see --help)" ;;
      *) [[ -z "${command}" ]] || die "one command at a time (got ${command} and $1)"; command="$1" ;;
    esac
    shift
  done
  [[ -n "${command}" ]] || { usage >&2; exit 2; }
  case "${command}" in
    create | wait | setup | train | logs | ssh | status | delete | up) ;;
    *) die "unknown command ${command} (see --help)" ;;
  esac
  load_settings
  case "${command}" in
    up) cmd_create; cmd_wait; cmd_setup; cmd_train ;;
    *) "cmd_${command}" ;;
  esac
}

main "$@"
