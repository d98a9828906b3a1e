#!/usr/bin/env bash
# N JAX processes on this machine, each with its own simulated CPU devices, joined by jax.distributed over
# loopback (gloo collectives): real multi-process training for development and tests, no cluster needed.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] [--] [COMMAND [ARGS...] | TRAIN_FLAGS...]

Starts NUM_PROCESSES copies of COMMAND on this machine (CPU only), each seeing DEVICES_PER_PROCESS simulated CPU
devices, with MOSAIC_COORDINATOR_ADDRESS=127.0.0.1:PORT, MOSAIC_NUM_PROCESSES and MOSAIC_PROCESS_ID set, so
mosaic_jax starts jax.distributed by itself. COMMAND defaults to "python -m mosaic_jax.train"; when the
arguments after the options start with "-", they are flags for that default command.

Process 0's output is streamed; every process's output is also in LOG_DIR/process_<i>.log. If one process
fails the others are stopped and its exit status is returned. SIGTERM/SIGINT are forwarded to every process
(mosaic_jax.train then saves a checkpoint at the same step everywhere and exits 0); processes still running
20 s after another one failed are killed.

Options:
  -n, --num-processes N        processes to start (default 2)
  -d, --devices-per-process D  simulated CPU devices per process (default 4)
  -p, --port PORT              coordinator port on 127.0.0.1 (default: a free port)
  -l, --log-dir DIR            per-process logs (default: a new temporary folder)
  -t, --timeout S              start-up rendezvous timeout in seconds (MOSAIC_DISTRIBUTED_TIMEOUT, default 120)
      --python PY              interpreter for the default command (default: $PYTHON or python3)
      --dry_run (or --dry-run) print the commands (with their environment) and exit
  -h, --help                   this help

Example (2 processes x 4 devices = the same 8-device mesh as one process with 8):
  launch/local_multiprocess.sh -n 2 -d 4 -- --config=tiny_cpu --workdir=runs/mp
EOF
}

num=2
devices=4
port=""
log_dir=""
timeout=120
python="${PYTHON:-python3}"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) num="$2"; shift 2 ;;
    -d|--devices-per-process) devices="$2"; shift 2 ;;
    -p|--port) port="$2"; shift 2 ;;
    -l|--log-dir) log_dir="$2"; shift 2 ;;
    -t|--timeout) timeout="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --dry_run|--dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
for value in "$num" "$devices" "$timeout"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "local_multiprocess.sh: expected a positive integer, got '$value' (see --help)" >&2
    exit 2
  fi
done

if [[ $# -eq 0 || "$1" == -* ]]; then
  set -- "$python" -m mosaic_jax.train "$@"
fi

if [[ -z "$port" ]]; then
  if [[ "$dry_run" -eq 1 ]]; then
    port=PORT
  else
    port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi
address="127.0.0.1:${port}"

# Keep the caller's XLA flags except any device count, which this launcher sets per process.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || xla_flags+="${flag} "
done
xla_flags+="--xla_force_host_platform_device_count=${devices}"

env_for() {   # the environment of process $1, as NAME=VALUE words
  printf '%s\n' "JAX_PLATFORMS=cpu" "XLA_FLAGS=${xla_flags}" \
    "MOSAIC_COORDINATOR_ADDRESS=${address}" "JAX_COORDINATOR_BIND_ADDRESS=${address}" \
    "MOSAIC_NUM_PROCESSES=${num}" "MOSAIC_PROCESS_ID=$1" "MOSAIC_DISTRIBUTED_TIMEOUT=${timeout}"
}

if [[ "$dry_run" -eq 1 ]]; then
  for ((i = 0; i < num; i++)); do
    words=()
    while IFS= read -r kv; do words+=("$kv"); done < <(env_for "$i")
    line="$(printf '%q ' env "${words[@]}" "$@")"
    echo "${line% }"
  done
  exit 0
fi

if [[ -z "$log_dir" ]]; then
  log_dir="$(mktemp -d "${TMPDIR:-/tmp}/mosaic_mp.XXXXXX")"
fi
mkdir -p "$log_dir"
echo "local_multiprocess: ${num} processes x ${devices} CPU devices, coordinator ${address}, logs in ${log_dir}" >&2

pids=()
for ((i = 0; i < num; i++)); do
  words=()
  while IFS= read -r kv; do words+=("$kv"); done < <(env_for "$i")
  env "${words[@]}" "$@" > "${log_dir}/process_${i}.log" 2>&1 &
  pids+=("$!")
done
tail -n +1 -F --pid="${pids[0]}" "${log_dir}/process_0.log" 2>/dev/null &
tail_pid=$!

forward() {   # forward a signal to every process we started (they checkpoint and exit)
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward TERM' INT   # background jobs of a script ignore SIGINT: send them SIGTERM instead

status=0
failed=""
kill_at=0   # after a failure: SECONDS at which survivors (stuck in a collective with the dead one) get SIGKILL
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  still=()
  for idx in "${!pids[@]}"; do
    pid="${pids[$idx]}"
    [[ " ${remaining[*]} " == *" ${pid} "* ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    if [[ "$rc" -ne 0 && -z "$failed" ]]; then
      status="$rc"
      failed="$idx"
      echo "local_multiprocess: process ${idx} exited with status ${rc}; stopping the others" >&2
      forward TERM
      kill_at=$((SECONDS + 20))
    fi
  done
  remaining=("${still[@]+"${still[@]}"}")
  if [[ ${#remaining[@]} -gt 0 ]]; then
    if [[ "$kill_at" -gt 0 && "$SECONDS" -ge "$kill_at" ]]; then
      forward KILL
    fi
    sleep 0.2
  fi
done
wait "$tail_pid" 2>/dev/null || true
if [[ -n "$failed" && "$failed" -ne 0 ]]; then
  echo "---- last lines of ${log_dir}/process_${failed}.log ----" >&2
  grep -v '^\[Gloo\]' "${log_dir}/process_${failed}.log" | tail -n 20 >&2 || true
fi
exit "$status"
