#!/usr/bin/env bash
# Runs one shard of a data_gen pipeline on a GPU machine (or several shards side by side on
# one machine). Start the same command on N machines with NUM_SHARDS=N and a different
# SHARD_INDEX each: the input is split by a stable hash of its ids, so no coordination is needed.
# A failed run is restarted (up to MAX_RESTARTS times); the ledger makes restarts resume.
#
#   launch/datagen/run_shard.sh [--dry-run] PIPELINE [python -m data_gen flags...]
#
# Example, 16 machines with 8 GPUs each, Llama-3.1-70B-Instruct on vLLM, tensor parallel 8:
#   NUM_SHARDS=16 SHARD_INDEX=3 launch/datagen/run_shard.sh hq \
#     --input seeds/*.jsonl --output-dir /shared/hq --backend-model meta-llama/Llama-3.1-70B-Instruct \
#     --queries-per-doc 4 --top-n 100000 --quality-scorer my_edu:score
# Example, 8 shards of an 8B generator on one 8-GPU machine (one GPU each):
#   LOCAL_SHARDS=8 GPUS_PER_SHARD=1 launch/datagen/run_shard.sh vl --input ... --backend-model ...
#
# Settings (environment):
#   NUM_SHARDS      machines splitting the input (default 1)
#   SHARD_INDEX     this machine's index, 0-based; default: JOB_COMPLETION_INDEX (Kubernetes
#                   indexed Job), SLURM_PROCID or SKYPILOT_NODE_RANK, else 0
#   LOCAL_SHARDS    shards run side by side on this machine (default 1); shard ids become
#                   SHARD_INDEX*LOCAL_SHARDS+j of NUM_SHARDS*LOCAL_SHARDS
#   GPUS_PER_SHARD  GPUs per local shard, passed as --tensor-parallel-size to the vllm backend
#                   (default: this machine's GPUs / LOCAL_SHARDS)
#   MAX_RESTARTS    reruns of a failed shard (default 3)
#   LOG_DIR         per-shard logs (default: data_gen_logs)
#   PYTHON          interpreter (default python3)
# --dry-run (or DRY_RUN=1) prints the commands instead of running them.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
NUM_SHARDS="${NUM_SHARDS:-1}"
SHARD_INDEX="${SHARD_INDEX:-${JOB_COMPLETION_INDEX:-${SLURM_PROCID:-${SKYPILOT_NODE_RANK:-0}}}}"
LOCAL_SHARDS="${LOCAL_SHARDS:-1}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
LOG_DIR="${LOG_DIR:-data_gen_logs}"

usage() {
  sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "launch/datagen/run_shard.sh: error: $*" >&2
  exit 2
}

# Prints a command, quoted so that it can be pasted into a shell.
quoted() {
  local arg line=""
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%*-]+$ ]]; then
      line+=" ${arg}"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  echo "${line# }"
}

is_int() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

count_gpus() {
  if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L | grep -c '^GPU'
  else
    echo 0
  fi
}

# Runs one shard with restarts; $1 = global shard index, $2 = total shards, $3 = GPU list.
run_one() {
  local shard="$1" total="$2" gpus="$3"
  shift 3
  local cmd=("${PYTHON}" -m data_gen "${PIPELINE}" "$@" --shard-index "${shard}"
             --num-shards "${total}")
  local log="${LOG_DIR}/${PIPELINE}-shard${shard}of${total}.log"
  if [[ "${DRY_RUN}" == "1" ]]; then
    echo "+ CUDA_VISIBLE_DEVICES=${gpus:-<all>} $(quoted "${cmd[@]}") >> ${log}"
    return 0
  fi
  mkdir -p "${LOG_DIR}"
  local attempt=0
  while true; do
    if [[ -n "${gpus}" ]]; then
      if CUDA_VISIBLE_DEVICES="${gpus}" "${cmd[@]}" >> "${log}" 2>&1; then return 0; fi
    elif "${cmd[@]}" >> "${log}" 2>&1; then
      return 0
    fi
    attempt=$((attempt + 1))
    if (( attempt > MAX_RESTARTS )); then
      echo "shard ${shard}/${total} failed ${attempt} times; see ${log}" >&2
      return 1
    fi
    echo "shard ${shard}/${total} failed; restart ${attempt}/${MAX_RESTARTS} (resumes)" >&2
    sleep 10
  done
}

main() {
  if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
  fi
  if [[ $# -lt 1 || "${1}" == "-h" || "${1}" == "--help" ]]; then
    usage
    exit 0
  fi
  PIPELINE="$1"
  shift
  case "${PIPELINE}" in
    hq|vl|negatives|mine) ;;
    *) die "PIPELINE must be hq, vl, negatives or mine, got '${PIPELINE}'" ;;
  esac
  local arg
  for arg in "$@"; do
    case "${arg}" in
      --shard-index*|--num-shards*) die "set SHARD_INDEX/NUM_SHARDS instead of ${arg}" ;;
    esac
  done
  if ! is_int "${NUM_SHARDS}" || (( NUM_SHARDS < 1 )); then
    die "NUM_SHARDS must be >= 1: '${NUM_SHARDS}'"
  fi
  if ! is_int "${SHARD_INDEX}" || (( SHARD_INDEX >= NUM_SHARDS )); then
    die "SHARD_INDEX must lie in [0, NUM_SHARDS=${NUM_SHARDS}): '${SHARD_INDEX}'"
  fi
  if ! is_int "${LOCAL_SHARDS}" || (( LOCAL_SHARDS < 1 )); then
    die "LOCAL_SHARDS must be >= 1: '${LOCAL_SHARDS}'"
  fi
  is_int "${MAX_RESTARTS}" || die "MAX_RESTARTS must be an integer: '${MAX_RESTARTS}'"

  local total=$((NUM_SHARDS * LOCAL_SHARDS))
  local per_shard="${GPUS_PER_SHARD:-}"
  if [[ -z "${per_shard}" && "${PIPELINE}" != "mine" ]]; then
    local n_gpus
    n_gpus="$(count_gpus)"
    per_shard=$((n_gpus / LOCAL_SHARDS))
  fi
  # vllm is the default backend: give it this shard's GPUs, unless the flags say otherwise.
  local extra=() backend="vllm" has_tp=0 prev=""
  for arg in "$@"; do
    case "${arg}" in
      --backend=*) backend="${arg#--backend=}" ;;
      --tensor-parallel-size*) has_tp=1 ;;
    esac
    [[ "${prev}" == "--backend" ]] && backend="${arg}"
    prev="${arg}"
  done
  if [[ "${backend}" == "vllm" && "${PIPELINE}" != "mine" && "${has_tp}" == "0" &&
        -n "${per_shard}" ]] && (( per_shard >= 1 )); then
    extra=(--tensor-parallel-size "${per_shard}")
  fi

  local j pids=() status=0
  for ((j = 0; j < LOCAL_SHARDS; j++)); do
    local shard=$((SHARD_INDEX * LOCAL_SHARDS + j)) gpus=""
    if (( LOCAL_SHARDS > 1 )) && [[ -n "${per_shard}" ]] && (( per_shard >= 1 )); then
      gpus="$(seq -s, $((j * per_shard)) $(((j + 1) * per_shard - 1)))"
    fi
    if [[ "${DRY_RUN}" == "1" ]]; then
      run_one "${shard}" "${total}" "${gpus}" "$@" "${extra[@]}"
    else
      run_one "${shard}" "${total}" "${gpus}" "$@" "${extra[@]}" &
      pids+=("$!")
    fi
  done
  local pid
  for pid in "${pids[@]}"; do
    wait "${pid}" || status=1
  done
  return "${status}"
}

main "$@"
