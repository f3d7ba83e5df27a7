#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), install this checkout on every worker,
# start the same `gpt3-jax ARGS...` on all of them, and stream worker 0's log. JAX finds the other
# workers by itself on a TPU VM (gpt3_jax/distributed.py); no coordinator flags are needed.
#
#   launch/tpu_pod.sh --name gpt3 --zone us-east5-a --accelerator v5p-1024 --queued \
#       -- train configs/gpt3-175b.yaml data.input=[gs://BUCKET/data] run.workdir=gs://BUCKET/gpt3-175b
#   launch/tpu_pod.sh --name gpt3 --zone us-east5-a --accelerator v5p-1024 --slices 2 -- train ...
#   launch/tpu_pod.sh --name gpt3 --zone us-east5-a --logs      # stream worker 0's log again
#   launch/tpu_pod.sh --name gpt3 --zone us-east5-a --stop      # SIGTERM: save a checkpoint, stop
#   launch/tpu_pod.sh --name gpt3 --zone us-east5-a --delete    # tear the slice down
#
# Add --dry-run to print the commands instead of running them. See docs/launch.md.
set -euo pipefail

usage() {
  cat << 'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [options] [-- GPT3_JAX_ARGS...]

  --name NAME          TPU VM (and queued resource) name
  --zone ZONE          e.g. us-east5-a
  --project PROJECT    default: gcloud's configured project
  --accelerator TYPE   e.g. v4-32, v5litepod-256, v5p-1024, v6e-256 (default v5p-8)
  --version VERSION    TPU software version (default: the one for the accelerator's generation)
  --queued             create through a queued resource and wait until it is ACTIVE (large
                       slices and spot capacity are usually only available this way)
  --slices N           N slices of --accelerator joined over the data-centre network (multi-slice;
                       implies --queued): nodes NAME-0..NAME-(N-1), MEGASCALE_* set on every
                       worker, and mesh.dcn_data=N added to a train command that sets none
  --spot               spot (preemptible) capacity
  --skip-install       reuse what an earlier run installed on the workers
  --logs               only stream worker 0's log
  --stop               send SIGTERM to the run on every worker (it saves a checkpoint and exits)
  --delete             delete the slice (and its queued resource with --queued)
  --dry-run            print the commands instead of running them

GPT3_JAX_ARGS, after --, are passed verbatim to `gpt3-jax` on every worker, e.g.
  -- train configs/gpt3-xl.yaml run.workdir=gs://BUCKET/runs/xl
run.workdir must be storage all workers share: a gs:// bucket (the workers' service account
needs write access to it; see docs/launch.md); the config path is relative to the copied checkout.
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

name="" zone="" project="" accelerator="v5p-8" version="" queued=0 spot=0 slices=1
skip_install=0 action="train" dry_run=0
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --zone) zone=${2:?--zone needs a value}; shift 2 ;;
    --project) project=${2:?--project needs a value}; shift 2 ;;
    --accelerator) accelerator=${2:?--accelerator needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --queued) queued=1; shift ;;
    --slices) slices=${2:?--slices needs a value}; shift 2 ;;
    --spot) spot=1; shift ;;
    --skip-install) skip_install=1; shift ;;
    --logs) action="logs"; shift ;;
    --stop) action="stop"; shift ;;
    --delete) action="delete"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ -n $name ]] || die "--name is required (see --help)"
[[ -n $zone ]] || die "--zone is required (see --help)"
[[ $action != train || ${#args[@]} -gt 0 ]] || die "nothing to run: add -- train CONFIG [overrides...] (see --help)"
[[ $slices =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got '$slices'"
# Names go into gcloud arguments and file names, never into a shell, but a name Cloud TPU would
# refuse is better refused here, before anything is created.
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and hyphens, starting with a letter, got '$name'"
[[ $zone =~ ^[a-z0-9-]+$ ]] || die "--zone must be a zone such as us-east5-a, got '$zone'"
[[ -z $project || $project =~ ^[a-z][-a-z0-9.:]*$ ]] || die "--project must be a project id such as my-project, got '$project'"

# The TPU VMs: one, or NAME-0 .. NAME-(N-1) for N slices (a multi-slice queued resource names
# its nodes PREFIX-i; only queued resources create several slices at once).
nodes=("$name")
if ((slices > 1)); then
  queued=1
  nodes=()
  for ((i = 0; i < slices; i++)); do
    nodes+=("$name-$i")
  done
  # the mesh's data axis spans the slices: mesh.dcn_data=N, unless the command sets it
  if [[ ${args[0]:-} == train && " ${args[*]} " != *" mesh.dcn_data="* ]]; then
    args+=("mesh.dcn_data=$slices")
  fi
fi

if [[ -z $version ]]; then
  case $accelerator in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) die "no default --version for accelerator '$accelerator'; pass --version" ;;
  esac
fi

# Single-quote a word for a POSIX shell unless it is plainly safe: used both for the commands we
# print and for the command lines sent to the workers, so what is printed is what runs.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() {
  if ((dry_run)); then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

note() {
  if ((dry_run)); then
    echo "# $*"
  else
    echo "tpu_pod.sh: $*" >&2
  fi
}

gflags=("--zone=$zone")
[[ -z $project ]] || gflags+=("--project=$project")
tpu_vm=(gcloud compute tpus tpu-vm)
queued_res=(gcloud compute tpus queued-resources)

# On every worker: a uv-managed Python 3.11 venv (TPU VM images ship an older Python) with this
# checkout installed, and the run's log and pid file in the home folder. The ~ is the worker's.
home='~'
remote_dir="$home/gpt3-jax"
venv="$home/gpt3-jax-venv"
log="$home/gpt3-jax-train.log"
pid="$home/gpt3-jax-train.pid"
megascale_port=8080

# Run a command on every worker of one node (a slice), or of every node.
ssh_node() {
  run "${tpu_vm[@]}" ssh "$1" "${gflags[@]}" --worker=all --command="$2"
}

ssh_all() {
  local node
  for node in "${nodes[@]}"; do
    ssh_node "$node" "$1"
  done
}

exists() {
  ((dry_run == 0)) && "${tpu_vm[@]}" describe "${nodes[0]}" "${gflags[@]}" --format="value(state)" > /dev/null 2>&1
}

create() {
  if exists; then
    note "reusing TPU VM $name"
    return
  fi
  local extra=() nodes_flags=(--node-id="$name")
  ((spot == 0)) || extra+=(--spot)
  if ((slices > 1)); then
    note "creating $slices $accelerator slices ${nodes[*]} ($version)"
    nodes_flags=(--node-count="$slices" --node-prefix="$name")
  else
    note "creating $accelerator slice $name ($version)"
  fi
  if ((queued)); then
    run "${queued_res[@]}" create "$name" "${nodes_flags[@]}" "${gflags[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${extra[@]}"
    note "waiting for the queued resource to become ACTIVE"
    if ((dry_run)); then
      run "${queued_res[@]}" describe "$name" "${gflags[@]}" --format="value(state.state)"
      return
    fi
    local state=""
    while [[ $state != ACTIVE ]]; do
      sleep 30
      state=$("${queued_res[@]}" describe "$name" "${gflags[@]}" --format="value(state.state)")
      note "queued resource $name: $state"
      [[ $state != FAILED && $state != SUSPENDED ]] || die "queued resource $name is $state"
    done
  else
    run "${tpu_vm[@]}" create "$name" "${gflags[@]}" --accelerator-type="$accelerator" \
      --version="$version" "${extra[@]}"
  fi
}

install() {
  local repo archive
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  archive="${TMPDIR:-/tmp}/gpt3-jax-$name.tar.gz"
  if ((dry_run == 0)) && [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
    note "warning: uncommitted changes in $repo are not copied (the workers get HEAD)"
  fi
  note "copying this checkout (git HEAD) to every worker and installing it"
  run git -C "$repo" archive --format=tar.gz --prefix=gpt3-jax/ -o "$archive" HEAD
  local node
  for node in "${nodes[@]}"; do
    run "${tpu_vm[@]}" scp "$archive" "$node:gpt3-jax.tar.gz" "${gflags[@]}" --worker=all
  done
  ssh_all "set -e; rm -rf $remote_dir && tar xzf ~/gpt3-jax.tar.gz -C ~ \
&& (command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh) && export PATH=~/.local/bin:\$PATH \
&& uv venv --allow-existing --python 3.11 $venv && uv pip install --python $venv/bin/python -e $remote_dir'[tpu]'"
}

# Slices talk over the data-centre network through libtpu's megascale runtime, which needs on every
# worker the slice count, its slice's id and a coordinator: worker 0 of slice 0 (JAX also numbers
# the processes from these). Cloud TPU's multi-slice docs set the same four variables.
megascale_env() {
  local slice=$1 coordinator=$2
  ((slices > 1)) || return 0
  printf 'export MEGASCALE_COORDINATOR_ADDRESS=%s:%s MEGASCALE_NUM_SLICES=%s MEGASCALE_SLICE_ID=%s MEGASCALE_PORT=%s; ' \
    "$coordinator" "$megascale_port" "$slices" "$slice" "$megascale_port"
}

start() {
  local cmd coordinator="" i
  cmd="$venv/bin/gpt3-jax $(quote_all "${args[@]}")"
  if ((slices > 1)); then
    note "the megascale coordinator: worker 0 of ${nodes[0]} (its internal IP; COORDINATOR_IP in a dry run)"
    local query=("${tpu_vm[@]}" describe "${nodes[0]}" "${gflags[@]}" --format="value(networkEndpoints[0].ipAddress)")
    if ((dry_run)); then
      run "${query[@]}"
      coordinator=COORDINATOR_IP
    else
      coordinator=$("${query[@]}")
    fi
    [[ -n $coordinator ]] || die "could not read the internal IP of ${nodes[0]}'s worker 0"
  fi
  note "starting on every worker: gpt3-jax $(quote_all "${args[@]}")"
  for ((i = 0; i < ${#nodes[@]}; i++)); do
    ssh_node "${nodes[i]}" "if [ -f $pid ] && kill -0 \$(cat $pid) 2> /dev/null; then echo 'a run is already going; use --stop first' >&2; \
exit 1; fi; $(megascale_env "$i" "$coordinator")cd $remote_dir && setsid nohup $cmd > $log 2>&1 < /dev/null & echo \$! > $pid"
  done
}

logs() {
  note "worker 0's log (Ctrl-C stops the streaming, not the run)"
  run "${tpu_vm[@]}" ssh "${nodes[0]}" "${gflags[@]}" --worker=0 --command="tail -n +1 -F $log"
}

case $action in
  train)
    create
    ((skip_install)) || install
    start
    logs
    ;;
  logs) logs ;;
  stop) ssh_all "[ -f $pid ] && kill -TERM \$(cat $pid) || echo 'no run on this worker'" ;;
  delete)
    if ((queued)); then
      run "${queued_res[@]}" delete "$name" "${gflags[@]}" --force --quiet
    else
      run "${tpu_vm[@]}" delete "$name" "${gflags[@]}" --quiet
    fi
    ;;
esac
