#!/usr/bin/env bash
# Run `gpt3-jax ARGS...` as N_PROCS JAX processes on this machine, each with DEVICES_PER_PROC
# simulated CPU devices, joined through jax.distributed on 127.0.0.1: a multi-host run in
# miniature, for testing sharding, checkpoints and failure handling without a cluster.
#
#   launch/local.sh N_PROCS DEVICES_PER_PROC -- ARGS...
#   launch/local.sh 2 2 -- train configs/tiny.yaml mesh.fsdp=4 run.workdir=/tmp/tiny2x2
#
# Process 0 prints to this terminal; process i>0 writes LOG_DIR/process_<i>.log (LOG_DIR defaults
# to a new temporary folder, printed at the start). SIGTERM and SIGINT are passed on to every
# process. When a process fails, the others get GRACE_S seconds (default 60) to notice and exit
# on their own (JAX stops them once the dead one misses its heartbeats), then SIGTERM, then
# SIGKILL. Exit status: 0 if all processes exit 0, else the first failure's status.
#
# Environment: GPT3_JAX (the command, default `gpt3-jax`, or `python3 -m gpt3_jax` if that is not
# on PATH), LOG_DIR, GRACE_S, GPT3_JAX_HEARTBEAT_TIMEOUT (seconds; see gpt3_jax/distributed.py).
set -euo pipefail

usage() {
  echo "usage: $0 N_PROCS DEVICES_PER_PROC -- ARGS...  (e.g. $0 2 2 -- train configs/tiny.yaml)" >&2
  exit 2
}

[[ $# -ge 3 && $3 == "--" ]] || usage
n_procs=$1
devices=$2
shift 3
[[ $n_procs =~ ^[1-9][0-9]*$ ]] || { echo "$0: N_PROCS must be a positive integer, got '$n_procs'" >&2; exit 2; }
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "$0: DEVICES_PER_PROC must be a positive integer, got '$devices'" >&2; exit 2; }
[[ $# -gt 0 ]] || usage
grace=${GRACE_S:-60}

if [[ -n ${GPT3_JAX:-} ]]; then
  read -ra cmd <<< "$GPT3_JAX"
elif command -v gpt3-jax > /dev/null; then
  cmd=(gpt3-jax)
else
  cmd=(python3 -m gpt3_jax)
fi

log_dir=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpt3-jax-local.XXXXXX")}
mkdir -p "$log_dir"

# A free port: bind port 0 and let the kernel choose (a tiny race with other programs; fine here).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# XLA_FLAGS minus any device count already in it (pytest sets 8), plus ours.
xla_flags=()
read -ra inherited <<< "${XLA_FLAGS:-}"
for flag in "${inherited[@]}"; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+=("$flag")
done
xla_flags+=("--xla_force_host_platform_device_count=$devices")

echo "local.sh: $n_procs processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs of processes 1..$((n_procs - 1)) in $log_dir" >&2

pids=()
for ((i = 0; i < n_procs; i++)); do
  env_vars=(
    "JAX_PLATFORMS=cpu"
    "XLA_FLAGS=${xla_flags[*]}"
    "GPT3_JAX_COORDINATOR=127.0.0.1:$port"
    "GPT3_JAX_NUM_PROCESSES=$n_procs"
    "GPT3_JAX_PROCESS_ID=$i"
    "PYTHONUNBUFFERED=1"
  )
  if ((i == 0)); then
    env "${env_vars[@]}" "${cmd[@]}" "$@" &
  else
    env "${env_vars[@]}" "${cmd[@]}" "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

signal_all() {
  local sig=$1 pid
  for pid in "${pids[@]}"; do
    kill "-$sig" "$pid" 2> /dev/null || true
  done
}

# Background jobs of a script ignore SIGINT, so Ctrl-C reaches the processes as SIGTERM (which
# the trainer treats the same way: finish the step, save, stop).
trap 'echo "local.sh: SIGTERM: stopping all processes" >&2; signal_all TERM' TERM
trap 'echo "local.sh: SIGINT: stopping all processes" >&2; signal_all TERM' INT

status=()
running=$n_procs
first_failure=0
failed_at=""
escalated=0
while ((running > 0)); do
  for ((i = 0; i < n_procs; i++)); do
    [[ -z ${status[i]:-} ]] || continue
    kill -0 "${pids[i]}" 2> /dev/null && continue
    rc=0
    wait "${pids[i]}" || rc=$?
    status[i]=$rc
    running=$((running - 1))
    if ((rc != 0)); then
      if ((rc > 128)); then
        how="was killed by signal $((rc - 128))"
      else
        how="exited with status $rc"
      fi
      where=""
      ((i == 0)) || where=" (log: $log_dir/process_$i.log)"
      echo "local.sh: process $i $how$where" >&2
      if ((first_failure == 0)); then
        first_failure=$rc
        failed_at=$SECONDS
        ((running == 0)) || echo "local.sh: the other processes have ${grace}s to exit before they are stopped" >&2
      fi
    fi
  done
  if [[ -n $failed_at ]] && ((running > 0)); then
    if ((escalated == 0 && SECONDS - failed_at >= grace)); then
      echo "local.sh: processes still running ${grace}s after a failure; sending SIGTERM" >&2
      signal_all TERM
      escalated=1
    elif ((escalated == 1 && SECONDS - failed_at >= grace + 10)); then
      echo "local.sh: sending SIGKILL" >&2
      signal_all KILL
      escalated=2
    fi
  fi
  ((running == 0)) || sleep 0.2
done

exit "$first_failure"
