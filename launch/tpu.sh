#!/usr/bin/env bash
# Runs a reasonir_jax training job on a Cloud TPU slice: create it, install the package on every
# worker, start the same training command on all workers, watch it, gather logs, delete it.
#
#   launch/tpu.sh [--dry-run] COMMAND [-- TRAINING_ARG...]
#
# Commands:
#   run      carry a run to the end: create the slice if missing, wait, setup, train, then watch;
#            a preempted slice (SUSPENDED/PREEMPTED/FAILED) is re-created and a trainer that
#            exits 75 (checkpointed on SIGTERM) is restarted, up to MAX_RESTARTS times; each
#            attempt resumes from the last checkpoint in WORKDIR. Run again to re-attach.
#   create   create the slice: a TPU VM, or a queued resource (QUEUED=1, always for NUM_SLICES>1)
#   wait     wait until a queued resource is ACTIVE
#   setup    copy this checkout (or clone GIT_URL) to every worker, make a Python WORKER_PYTHON
#            venv with uv and install the package with [tpu,gcs]
#   train    start training on all workers, detached; refused where a trainer already runs
#   status   the slice's state and each worker's trainer state
#   stop     stop training on all workers (SIGTERM: the trainer checkpoints); `run` then ends
#   logs     gather every worker's log into LOG_DIR/<node>/worker-<i>.log
#   ssh      run CMD on all workers, or on WORKER=i (e.g. CMD='tail -n 5 reasonir-run/train.log')
#   delete   delete the slice (and the queued resource)
#   up       create, wait, setup, train (no watching; `run` does that too)
#
# Settings come from the environment or from ENV_FILE (see launch/env.example):
#   PROJECT, ZONE (required); TPU_NAME, ACCELERATOR_TYPE (v5p-128), RUNTIME_VERSION (per chip),
#   NUM_SLICES (1), QUEUED (0), SPOT (0), CONFIG (reasonir_jax/configs/llama3_8b.py),
#   WORKDIR (gs://..., required by train), TRAIN_ARGS (extra --config.x=y overrides, shell words
#   expanded on each worker), GIT_URL/GIT_REF, SETUP_CMD (run on each worker after setup, e.g. staging weights),
#   LOG_DIR, WORKER_PYTHON (3.11), MAX_RESTARTS (10), LIBTPU_INIT_ARGS (default: the FSDP
#   collective-overlap flags for v5p, see FSDP_OVERLAP_FLAGS; set it, even empty, to replace them),
#   POLL_SECONDS (60), LOGS_EVERY (600 s; run gathers logs this often), STOP_WAIT (600),
#   DELETE_WHEN_DONE (1).
# Arguments after `--` go to the trainer exactly as given (quoted for the remote shell).
# --dry-run (or DRY_RUN=1) prints every command instead of running it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
PREEMPTED_STATUS=75  # the trainer's exit status after checkpointing on SIGTERM / preemption
EXTRA_ARGS=()
RESTARTS=0
# libtpu flags that let XLA overlap FSDP's all-gathers and reduce-scatters with compute, as
# MaxText's v5p recipes set them (MaxText/configs/v5p/llama2_7b.sh), plus the host-aware passes
# its host-offload test sets (end_to_end/tpu/test_host_offload.sh) for remat `offload`, which the
# 8B recipe uses. Only v5p gets them by default: they are the ones published for it.
FSDP_OVERLAP_FLAGS="--xla_tpu_enable_async_collective_fusion=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_enable_async_collective_fusion_multiple_steps=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_overlap_compute_collective_tc=true"
FSDP_OVERLAP_FLAGS+=" --xla_enable_async_all_gather=true"
FSDP_OVERLAP_FLAGS+=" --xla_enable_async_collective_permute=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_enable_ag_backward_pipelining=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_megacore_fusion_allow_ags=false"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_enable_data_parallel_all_reduce_opt=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_data_parallel_opt_different_sized_ops=true"
FSDP_OVERLAP_FLAGS+=" --xla_tpu_enable_host_aware_passes=true"

usage() {
  # The header comment, up to the first line that is not a comment.
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}"
}

die() {
  echo "launch/tpu.sh: error: $*" >&2
  exit 2
}

# $1 as one word for a POSIX shell: unchanged when safe, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints the command (dry run), quoted so it can be pasted into a shell, or runs it.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    local arg line="+"
    for arg in "$@"; do
      line+=" $(quote "${arg}")"
    done
    echo "${line}"
  else
    "$@"
  fi
}

# One field of the slice table in reasonir_jax/scale/tpu_topologies.py (hosts, runtime_version, ...).
slice_field() {
  (cd "${REPO_ROOT}" && "${PYTHON}" -m reasonir_jax.scale.tpu_topologies "${ACCELERATOR_TYPE}" "$1")
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
  CONFIG="${CONFIG:-reasonir_jax/configs/llama3_8b.py}"
  WORKDIR="${WORKDIR:-}"
  TRAIN_ARGS="${TRAIN_ARGS:-}"
  GIT_URL="${GIT_URL:-}"
  GIT_REF="${GIT_REF:-main}"
  SETUP_CMD="${SETUP_CMD:-}"
  LOG_DIR="${LOG_DIR:-logs/${TPU_NAME}}"
  WORKER_PYTHON="${WORKER_PYTHON:-3.11}"
  # Unset means the default for the chip; set (even to nothing) means exactly that.
  if [[ -z "${LIBTPU_INIT_ARGS+set}" ]]; then
    LIBTPU_INIT_ARGS=""
    [[ "${ACCELERATOR_TYPE}" != v5p-* ]] || LIBTPU_INIT_ARGS="${FSDP_OVERLAP_FLAGS}"
  fi
  MAX_RESTARTS="${MAX_RESTARTS:-10}"
  POLL_SECONDS="${POLL_SECONDS:-60}"
  LOGS_EVERY="${LOGS_EVERY:-600}"
  STOP_WAIT="${STOP_WAIT:-600}"
  DELETE_WHEN_DONE="${DELETE_WHEN_DONE:-1}"
  REMOTE_DIR="reasonir-jax"   # under each worker's home
  REMOTE_RUN="reasonir-run"   # lock, pid, exit status and train.log of each worker (worker.sh)
  [[ "${NUM_SLICES}" =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=${NUM_SLICES} is not a positive integer"
  [[ "${MAX_RESTARTS}" =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=${MAX_RESTARTS} is not a non-negative integer"
  [[ "${STOP_WAIT}" =~ ^[0-9]+$ ]] || die "STOP_WAIT=${STOP_WAIT} is not a number of seconds"
  [[ "${LOGS_EVERY}" =~ ^[0-9]+$ ]] || die "LOGS_EVERY=${LOGS_EVERY} is not a number of seconds"
  [[ "${POLL_SECONDS}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "POLL_SECONDS=${POLL_SECONDS} is not a number of seconds"
  # The pinned jax/flax/orbax need Python >= 3.11; stock TPU VM images ship 3.10, so setup makes
  # a uv-managed interpreter of this version instead of using the image's python3.
  [[ "${WORKER_PYTHON}" =~ ^3\.(1[1-9]|[2-9][0-9])(\.[0-9]+)?$ ]] ||
    die "WORKER_PYTHON=${WORKER_PYTHON}: the pinned jax/flax/orbax need Python >= 3.11 (e.g. 3.11 or 3.12)"
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

# Runs $1 on every worker of every node (or on worker $2 only). --quiet: no prompt (for an ssh
# key, say) may stall an unattended run.
ssh_all() {
  local node
  for node in $(node_names); do
    run gcloud compute tpus tpu-vm ssh "${node}" "${GCLOUD_SCOPE[@]}" --quiet --worker="${2:-all}" \
      --command="$1"
  done
}

# worker.sh (copied by setup) on each worker; a worker without a checkout reports state=new.
worker_command() {
  echo "if [ -f ~/${REMOTE_DIR}/launch/worker.sh ]; then STOP_WAIT=${STOP_WAIT} bash ~/${REMOTE_DIR}/launch/worker.sh $1; else echo \"reasonir-worker host=\$(hostname) attempt=0 state=new stopped=0\"; fi"
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

# Sets DESCRIBE to the gcloud command that prints the slice's state.
describe_state_command() {
  if [[ "${QUEUED}" == "1" ]]; then
    DESCRIBE=(gcloud compute tpus queued-resources describe "${TPU_NAME}" "${GCLOUD_SCOPE[@]}"
      --format='value(state.state)')
  else
    DESCRIBE=(gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${GCLOUD_SCOPE[@]}"
      --format='value(state)')
  fi
}

# The slice's state, one word: a queued resource's (ACCEPTED, PROVISIONING, ACTIVE, SUSPENDED,
# FAILED, ...) or a TPU VM's (READY is reported as ACTIVE; PREEMPTED, ...); MISSING when it does
# not exist, UNKNOWN when gcloud fails otherwise (network, auth).
slice_state() {
  local out rc
  describe_state_command
  out="$("${DESCRIBE[@]}" 2>&1)" && rc=0 || rc=$?
  if [[ "${rc}" -ne 0 ]]; then
    if [[ "${out}" == *NOT_FOUND* || "${out}" == *"was not found"* ]]; then
      echo MISSING
    else
      echo "launch/tpu.sh: ${DESCRIBE[*]:0:5} failed: ${out}" >&2
      echo UNKNOWN
    fi
    return 0
  fi
  out="${out//[[:space:]]/}"
  if [[ "${out}" == READY ]]; then
    out=ACTIVE
  fi
  echo "${out:-UNKNOWN}"
}

cmd_wait() {
  [[ "${QUEUED}" == "1" ]] || return 0
  if [[ "${DRY_RUN}" == "1" ]]; then
    describe_state_command
    run "${DESCRIBE[@]}"
    return 0
  fi
  local state=""
  while [[ "${state}" != "ACTIVE" ]]; do
    state="$(slice_state)"
    echo "$(date -u +%H:%M:%S) queued resource ${TPU_NAME}: ${state}"
    case "${state}" in
      FAILED | SUSPENDED | MISSING)
        die "queued resource ${TPU_NAME} is ${state} (launch/tpu.sh run re-creates it by itself)" ;;
      ACTIVE) ;;
      *) sleep "${POLL_SECONDS}" ;;
    esac
  done
}

cmd_setup() {
  # Replacing the checkout under a live trainer would break it: refuse while one runs.
  local guard="if [ -e ~/${REMOTE_RUN}/lock ] && ! flock -n ~/${REMOTE_RUN}/lock true; then echo \"\$(hostname): training is running; launch/tpu.sh stop first\" >&2; exit 3; fi"
  # uv comes from the package registry (pip --user); where the image lacks WORKER_PYTHON (stock
  # images ship 3.10), `uv venv` downloads a CPython build (python-build-standalone).
  local uv="\${HOME}/.local/bin/uv"
  local install="cd ~/${REMOTE_DIR} && { test -x ${uv} || python3 -m pip install --quiet --user uv; } && ${uv} venv --quiet --python ${WORKER_PYTHON} .venv && ${uv} pip install --quiet --python .venv/bin/python -e '.[tpu,gcs]'"
  # A re-created slice has empty disks: whatever the run needs there is staged again here.
  if [[ -n "${SETUP_CMD}" ]]; then
    install+=" && { ${SETUP_CMD}; }"
  fi
  if [[ -n "${GIT_URL}" ]]; then
    ssh_all "${guard}; rm -rf ~/${REMOTE_DIR} && git clone --depth=1 --branch=$(quote "${GIT_REF}") $(quote "${GIT_URL}") ~/${REMOTE_DIR} && ${install}"
    return 0
  fi
  local tarball
  tarball="${TMPDIR:-/tmp}/reasonir-jax-$$.tar.gz"
  run tar -czf "${tarball}" -C "${REPO_ROOT}" --exclude=.git --exclude='.venv*' \
    --exclude=__pycache__ --exclude=logs --exclude=workdir .
  local node
  for node in $(node_names); do
    run gcloud compute tpus tpu-vm scp "${tarball}" "${node}:reasonir-jax.tar.gz" \
      "${GCLOUD_SCOPE[@]}" --quiet --worker=all
  done
  ssh_all "${guard}; rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/reasonir-jax.tar.gz -C ~/${REMOTE_DIR} && ${install}"
  run rm -f "${tarball}"
}

# The command every worker runs: worker.sh starts the trainer detached (so a dropped SSH session
# does not stop it) unless one already runs there. --multihost makes the trainer call
# jax.distributed.initialize(), which finds the other workers from the TPU metadata.
# TRAIN_ARGS are shell words for the worker's shell ($HOME expands there); EXTRA_ARGS (after
# `--`) are quoted so that each reaches the trainer as given.
train_command() {
  [[ -n "${WORKDIR}" ]] || die "WORKDIR is not set (a gs:// path for checkpoints and TensorBoard)"
  [[ "${WORKDIR}" == gs://* ]] || echo "launch/tpu.sh: warning: WORKDIR=${WORKDIR} is not a gs:// path; every worker will write its own local copy" >&2
  local command="cd ~/${REMOTE_DIR} &&"
  if [[ -n "${ATTEMPT:-}" ]]; then
    command+=" ATTEMPT=${ATTEMPT}"
  fi
  command+=" JAX_COMPILATION_CACHE_DIR=$(quote "${WORKDIR}/jax_cache")"
  # Logs leave the VM as they are written: a preempted VM's disk goes with it.
  command+=" LOG_STREAM=$(quote "${WORKDIR}/logs") PYTHONUNBUFFERED=1"
  if [[ -n "${LIBTPU_INIT_ARGS}" ]]; then
    command+=" LIBTPU_INIT_ARGS=$(quote "${LIBTPU_INIT_ARGS}")"
  fi
  command+=" bash launch/worker.sh start"
  command+=" .venv/bin/python -m reasonir_jax.train --config=$(quote "${CONFIG}")"
  command+=" --workdir=$(quote "${WORKDIR}") --multihost"
  if [[ -n "${TRAIN_ARGS}" ]]; then
    command+=" ${TRAIN_ARGS}"
  fi
  local arg
  for arg in "${EXTRA_ARGS[@]}"; do
    command+=" $(quote "${arg}")"
  done
  echo "${command}"
}

cmd_train() {
  local command
  command="$(train_command)"
  if [[ "${NUM_SLICES}" -gt 1 ]]; then
    # Multi-slice: the queued resource's ssh reaches every node; libtpu joins the slices over DCN.
    run gcloud compute tpus queued-resources ssh "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" --quiet \
      --node=all --worker=all --command="${command}"
  else
    ssh_all "${command}"
  fi
  echo "started on ${NUM_SLICES} x ${HOSTS} workers; follow with: launch/tpu.sh status / logs" >&2
}

# Gathers every worker's train.log (all attempts on that VM) into $1/<node>/worker-<i>.log.
cmd_logs() {
  local dest="${1:-${LOG_DIR}}" node i
  for node in $(node_names); do
    run mkdir -p "${dest}/${node}"
    for ((i = 0; i < HOSTS; i++)); do
      run gcloud compute tpus tpu-vm scp "${node}:${REMOTE_RUN}/train.log" \
        "${dest}/${node}/worker-${i}.log" "${GCLOUD_SCOPE[@]}" --quiet --worker="${i}"
    done
  done
}

cmd_ssh() {
  [[ -n "${CMD:-}" ]] || die "CMD is not set (the command to run on every worker)"
  ssh_all "${CMD}" "${WORKER:-all}"
}

cmd_status() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    describe_state_command
    run "${DESCRIBE[@]}"
    ssh_all "$(worker_command status)"
    return 0
  fi
  local state
  state="$(slice_state)"
  echo "slice ${TPU_NAME} (${NUM_SLICES} x ${ACCELERATOR_TYPE}): ${state}"
  if [[ "${state}" == ACTIVE ]]; then
    local lines
    lines="$(worker_lines)"
    echo "${lines}"
    echo "training: $(summarize_workers <<<"${lines}")"
  fi
}

cmd_stop() {
  ssh_all "$(worker_command stop)"
}

cmd_delete() {
  if [[ "${QUEUED}" == "1" ]]; then
    # --force deletes the TPU VMs of the queued resource too.
    run gcloud compute tpus queued-resources delete "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${GCLOUD_SCOPE[@]}" --quiet
  fi
}

# ---- run: the watch loop ----

log() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
  echo "${line}" >&2
  echo "${line}" >>"${LOG_DIR}/run.log"
}

fail() {
  log "error: $*"
  exit 1
}

# Runs "$@" in a subshell with errexit in force (a bare `if ! f` would switch it off inside f);
# sets STEP_STATUS.
step() {
  set +e
  (
    set -e
    "$@"
  )
  STEP_STATUS=$?
  set -e
}

# Counts one restart of the budget, or ends the run when MAX_RESTARTS are spent.
next_restart() {
  RESTARTS=$((RESTARTS + 1))
  if [[ "${RESTARTS}" -gt "${MAX_RESTARTS}" ]]; then
    fail "restart limit reached (MAX_RESTARTS=${MAX_RESTARTS}) at: $1; the slice is left as it is (launch/tpu.sh status, logs, delete)"
  fi
  log "restart ${RESTARTS}/${MAX_RESTARTS}: $1"
}

# Every worker's status line (worker.sh status), from all nodes; whatever gcloud puts before a
# line is dropped. A hung ssh counts as no answer.
worker_lines() {
  local node
  for node in $(node_names); do
    timeout 300 gcloud compute tpus tpu-vm ssh "${node}" "${GCLOUD_SCOPE[@]}" --quiet --worker=all \
      --command="$(worker_command status)" 2>/dev/null || true
  done | grep -o 'reasonir-worker .*' || true
}

# Reads worker status lines; prints "<summary> <highest attempt>", the summary being the first
# that applies of: unreachable (a worker did not answer), failed=<status>, stopped, preempted
# (exit 75, killed by a signal, or lost), new (no checkout: set up), idle (never started),
# running, done (every worker exited 0).
summarize_workers() {
  local expected=$((HOSTS * NUM_SLICES)) n=0 max_attempt=0 line field
  local failed="" stopped=0 preempted=0 new=0 idle=0 running=0
  while read -r line; do
    [[ "${line}" == "reasonir-worker "* ]] || continue
    n=$((n + 1))
    local state="" status="" attempt=0 fields
    read -ra fields <<<"${line}"
    for field in "${fields[@]}"; do
      case "${field}" in
        state=*) state="${field#state=}" ;;
        status=*) status="${field#status=}" ;;
        attempt=*) attempt="${field#attempt=}" ;;
        stopped=1) stopped=1 ;;
      esac
    done
    [[ "${attempt}" -le "${max_attempt}" ]] || max_attempt="${attempt}"
    case "${state}:${status}" in
      running:*) running=$((running + 1)) ;;
      exited:0) ;;
      exited:"${PREEMPTED_STATUS}" | exited:129 | exited:137 | exited:143 | lost:*) preempted=1 ;;
      exited:*) failed="${status}" ;;
      new:*) new=1 ;;
      *) idle=1 ;;
    esac
  done
  local summary="done"
  if [[ "${n}" -lt "${expected}" ]]; then
    summary=unreachable
  elif [[ -n "${failed}" ]]; then
    summary="failed=${failed}"
  elif [[ "${stopped}" == 1 && "${running}" == 0 ]]; then
    summary=stopped
  elif [[ "${preempted}" == 1 ]]; then
    summary=preempted
  elif [[ "${new}" == 1 ]]; then
    summary=new
  elif [[ "${idle}" == 1 ]]; then
    summary=idle
  elif [[ "${running}" -gt 0 ]]; then
    summary=running
  fi
  echo "${summary} ${max_attempt}"
}

# Starts attempt ATTEMPT on every worker (after a setup when $1 is "setup").
start_attempt() {
  if [[ "$1" == setup ]]; then
    log "setting up ${TPU_NAME} (Python ${WORKER_PYTHON} venv, pip install)"
    step cmd_setup
    if [[ "${STEP_STATUS}" -ne 0 ]]; then
      next_restart "setup failed with status ${STEP_STATUS}"
      return 0
    fi
  fi
  ATTEMPT=$((ATTEMPT + 1))
  log "starting attempt ${ATTEMPT}"
  step cmd_train
  if [[ "${STEP_STATUS}" -ne 0 ]]; then
    next_restart "starting attempt ${ATTEMPT} failed with status ${STEP_STATUS}"
  fi
}

cmd_run() {
  train_command >/dev/null  # settings errors now, not after the slice is up
  if [[ "${DRY_RUN}" == "1" ]]; then
    cmd_create
    cmd_wait
    cmd_setup
    ATTEMPT=1 cmd_train
    ssh_all "$(worker_command status)"
    echo "(dry run: then every POLL_SECONDS=${POLL_SECONDS}s the slice state and the status above;" \
      "a SUSPENDED/PREEMPTED/FAILED slice is deleted and re-created, exit ${PREEMPTED_STATUS} restarts" \
      "training, up to MAX_RESTARTS=${MAX_RESTARTS} times)" >&2
    return 0
  fi
  mkdir -p "${LOG_DIR}"
  exec 8>>"${LOG_DIR}/run.lock"
  flock -n 8 || die "another launch/tpu.sh run is already watching ${TPU_NAME} (lock ${LOG_DIR}/run.lock)"
  ATTEMPT=0
  local created=0 state summary seen last="" logs_at=${SECONDS}
  log "run ${TPU_NAME}: ${NUM_SLICES} x ${ACCELERATOR_TYPE}, workdir ${WORKDIR}, up to ${MAX_RESTARTS} restarts"
  while true; do
    state="$(slice_state)"
    case "${state}" in
      ACTIVE) ;;
      MISSING | SUSPENDED | PREEMPTED | FAILED | TERMINATED)
        if [[ "${state}" != MISSING ]]; then
          next_restart "slice ${TPU_NAME} is ${state}"
          step cmd_delete
        elif [[ "${created}" == 1 ]]; then
          next_restart "slice ${TPU_NAME} disappeared"
        fi
        log "creating ${TPU_NAME}"
        created=1
        step cmd_create
        [[ "${STEP_STATUS}" -eq 0 ]] || { log "create failed (status ${STEP_STATUS})"; sleep "${POLL_SECONDS}"; }
        continue
        ;;
      *)
        log "slice ${TPU_NAME}: ${state}"
        sleep "${POLL_SECONDS}"
        continue
        ;;
    esac
    read -r summary seen <<<"$(worker_lines | summarize_workers)"
    [[ "${seen}" -le "${ATTEMPT}" ]] || ATTEMPT="${seen}"
    [[ "${summary}" == "${last}" ]] || log "workers of ${TPU_NAME}: ${summary} (attempt ${ATTEMPT})"
    last="${summary}"
    case "${summary}" in
      running | unreachable)
        # A preempted VM's disk goes with it: keep a recent copy of the logs here.
        if [[ "${summary}" == running && $((SECONDS - logs_at)) -ge "${LOGS_EVERY}" ]]; then
          step cmd_logs "${LOG_DIR}/attempt-${ATTEMPT}"
          logs_at=${SECONDS}
        fi
        sleep "${POLL_SECONDS}"
        ;;
      new) start_attempt setup ;;
      idle) start_attempt train ;;
      preempted)
        next_restart "attempt ${ATTEMPT} ended preempted (exit ${PREEMPTED_STATUS}) or lost"
        # Workers still running are stuck in a collective with the lost ones.
        step ssh_all "$(worker_command 'stop --no-mark')"
        step cmd_logs "${LOG_DIR}/attempt-${ATTEMPT}"
        start_attempt train
        ;;
      stopped)
        log "stopped by launch/tpu.sh stop; not restarting; the slice stays up (launch/tpu.sh delete)"
        return 0
        ;;
      failed=*)
        step cmd_logs "${LOG_DIR}/attempt-${ATTEMPT}"
        fail "attempt ${ATTEMPT} failed with exit status ${summary#failed=} (logs: ${LOG_DIR}/attempt-${ATTEMPT}); fix it and run again: training resumes from the last checkpoint; the slice is left up"
        ;;
      done)
        log "training finished (attempt ${ATTEMPT}, ${RESTARTS} restarts)"
        step cmd_logs "${LOG_DIR}/attempt-${ATTEMPT}"
        if [[ "${DELETE_WHEN_DONE}" == "1" ]]; then
          log "deleting ${TPU_NAME} (DELETE_WHEN_DONE=1)"
          step cmd_delete
        fi
        return 0
        ;;
    esac
  done
}

main() {
  local command=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      -*) die "unknown flag $1 (see --help)" ;;
      *) [[ -z "${command}" ]] || die "one command at a time (got ${command} and $1)"; command="$1" ;;
    esac
    shift
  done
  [[ -n "${command}" ]] || { usage >&2; exit 2; }
  case "${command}" in
    run | create | wait | setup | train | status | stop | logs | ssh | delete | up) ;;
    *) die "unknown command ${command} (see --help)" ;;
  esac
  if [[ "${#EXTRA_ARGS[@]}" -gt 0 && ! "${command}" =~ ^(run|train|up)$ ]]; then
    die "arguments after -- are training arguments; ${command} takes none"
  fi
  load_settings
  case "${command}" in
    up) cmd_create; cmd_wait; cmd_setup; cmd_train ;;
    *) "cmd_${command}" ;;
  esac
}

main "$@"
