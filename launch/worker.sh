#!/usr/bin/env bash
# Runs on each TPU worker (launch/tpu.sh calls it over ssh): starts the training command
# detached, refuses a second start while one runs, reports its state and stops it.
#
#   worker.sh start COMMAND [ARG...]   start COMMAND detached (ATTEMPT=n numbers the log header;
#                                      LOG_STREAM=DIR also streams its output to
#                                      DIR/<host>/attempt-<n>/, see reasonir_jax/training/log_stream.py)
#   worker.sh status                   one line: reasonir-worker host=H attempt=N state=S ...
#   worker.sh stop [--no-mark]         SIGTERM the trainer (it checkpoints and exits 75), wait up
#                                      to STOP_WAIT seconds (600), then SIGKILL; unless --no-mark
#                                      (the launcher restarting an attempt), mark the run stopped
#
# State lives in RUN_DIR (~/reasonir-run):
#   lock         flock-held by the running attempt, released when it ends (so a crashed or
#                killed attempt never leaves a stale guard behind)
#   train.pid    the training process
#   train.log    every attempt's output, appended, each between header lines
#   attempt      the number of the last attempt started here
#   exit_status  the last attempt's exit status, written when it ends
#   stopped      written by `stop`: the launcher must not restart the run
set -euo pipefail

RUN_DIR="${RUN_DIR:-${HOME}/reasonir-run}"
STOP_WAIT="${STOP_WAIT:-600}"

die() {
  echo "worker.sh on $(hostname): error: $1" >&2
  exit "${2:-2}"
}

# True while an attempt holds the lock.
is_running() {
  [[ -e "${RUN_DIR}/lock" ]] && ! flock -n "${RUN_DIR}/lock" true
}

read_file() {
  cat "${RUN_DIR}/$1" 2>/dev/null || echo "$2"
}

cmd_start() {
  [[ $# -gt 0 ]] || die "start needs the training command"
  mkdir -p "${RUN_DIR}"
  # The lock is taken here, before detaching, so two starts racing each other cannot both win;
  # the detached attempt inherits fd 9 and holds the lock until it has written its status.
  exec 9>>"${RUN_DIR}/lock"
  if ! flock -n 9; then
    die "training is already running here (pid $(read_file train.pid '?')); stop it first: launch/tpu.sh stop" 3
  fi
  local attempt="${ATTEMPT:-$(($(read_file attempt 0) + 1))}"
  rm -f "${RUN_DIR}/exit_status" "${RUN_DIR}/stopped" "${RUN_DIR}/train.pid"
  echo "${attempt}" >"${RUN_DIR}/attempt"
  printf '===== attempt %s on %s started %s:%s\n' "${attempt}" "$(hostname)" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(printf ' %q' "$@")" >>"${RUN_DIR}/train.log"
  nohup bash "${BASH_SOURCE[0]}" _run "${attempt}" "$@" >>"${RUN_DIR}/train.log" 2>&1 </dev/null &
  echo "reasonir-worker host=$(hostname) attempt=${attempt} state=started"
}

# The detached attempt: runs the command, records its exit status, then releases the lock.
cmd__run() {
  local attempt="$1" child status=0 streamer=""
  shift
  if [[ -n "${LOG_STREAM:-}" ]]; then
    # The output also goes, as it is written, to LOG_STREAM/<host>/attempt-<n>/ (the workdir
    # outlives a preempted VM; its disk does not). Through a FIFO, so that $! is the trainer.
    # This shell holds both ends while the two start, so neither open blocks.
    local fifo="${RUN_DIR}/output.fifo"
    rm -f "${fifo}"
    mkfifo "${fifo}"
    exec 8<>"${fifo}"
    "${LOG_STREAM_PYTHON:-.venv/bin/python}" -m reasonir_jax.training.log_stream \
      "${LOG_STREAM%/}/$(hostname)/attempt-${attempt}" <"${fifo}" 8>&- 9>&- &
    streamer=$!
    "$@" >"${fifo}" 2>&1 8>&- 9>&- &
    child=$!
    exec 8>&-
  else
    "$@" 9>&- &
    child=$!
  fi
  echo "${child}" >"${RUN_DIR}/train.pid"
  # A SIGTERM meant for the whole VM (preemption) reaches the trainer too; this shell outlives
  # it long enough to record the status.
  trap 'kill -TERM "${child}" 2>/dev/null || true' TERM HUP INT
  while kill -0 "${child}" 2>/dev/null; do
    wait "${child}" || true
  done
  wait "${child}" || status=$?
  if [[ -n "${streamer}" ]]; then
    # The streamer ends at the trainer's last byte, after writing the last part.
    while kill -0 "${streamer}" 2>/dev/null; do
      wait "${streamer}" || true
    done
    rm -f "${RUN_DIR}/output.fifo"
  fi
  echo "${status}" >"${RUN_DIR}/exit_status.tmp"
  mv "${RUN_DIR}/exit_status.tmp" "${RUN_DIR}/exit_status"
  printf '===== attempt %s ended %s with status %s\n' "${attempt}" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${status}"
}

cmd_status() {
  local state
  if is_running; then
    state="running pid=$(read_file train.pid '?')"
  elif [[ -f "${RUN_DIR}/exit_status" ]]; then
    state="exited status=$(read_file exit_status '?')"
  elif [[ -f "${RUN_DIR}/attempt" ]]; then
    state="lost"  # started, but ended without a status (the attempt itself was killed)
  else
    state="idle"
  fi
  local stopped=0
  [[ ! -f "${RUN_DIR}/stopped" ]] || stopped=1
  echo "reasonir-worker host=$(hostname) attempt=$(read_file attempt 0) state=${state} stopped=${stopped}"
}

cmd_stop() {
  mkdir -p "${RUN_DIR}"
  [[ "${1:-}" == --no-mark ]] || touch "${RUN_DIR}/stopped"
  if is_running; then
    local pid waited=0
    pid="$(read_file train.pid '')"
    [[ -z "${pid}" ]] || kill -TERM "${pid}" 2>/dev/null || true
    while is_running && [[ "${waited}" -lt "${STOP_WAIT}" ]]; do
      sleep 1
      waited=$((waited + 1))
    done
    if is_running; then
      echo "worker.sh on $(hostname): no exit ${STOP_WAIT}s after SIGTERM; sending SIGKILL" >&2
      [[ -z "${pid}" ]] || kill -KILL "${pid}" 2>/dev/null || true
      while is_running; do sleep 1; done
    fi
  fi
  cmd_status
}

case "${1:-}" in
  start | _run | status | stop)
    command="$1"
    shift
    "cmd_${command}" "$@"
    ;;
  *) die "usage: worker.sh start COMMAND [ARG...] | status | stop [--no-mark]" ;;
esac
