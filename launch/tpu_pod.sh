#!/usr/bin/env bash
# Facial-R1 on a Cloud TPU VM pod slice: create it, install this checkout on every worker, launch a
# stage on all workers at once, follow the logs, stop (with a checkpoint) and delete.
#
#   export TPU_NAME=fr1-v5p32 ZONE=us-east5-a ACCELERATOR_TYPE=v5p-32 RUNTIME_VERSION=v2-alpha-tpuv5
#   launch/tpu_pod.sh create                 # the pod slice (add SPOT=1 for spot capacity)
#   launch/tpu_pod.sh setup                  # git HEAD of this checkout + pip install on every worker
#   BUCKET=my-bucket launch/tpu_pod.sh mount # optional: gcsfuse gs://my-bucket at /mnt/my-bucket everywhere
#   DATA_SRC=gs://my-bucket/fea20k launch/tpu_pod.sh data   # copy data to every worker's local disk
#   CONFIG=configs/sft.py:qwen2_5_vl_7b WORKDIR=/mnt/my-bucket/runs/sft7b \
#     TRAIN_FLAGS="--config.model.checkpoint=/data/Qwen2.5-VL-7B-Instruct --config.data.train_jsonl=..." \
#     launch/tpu_pod.sh run                  # one process per worker, jax.distributed over all of them
#   launch/tpu_pod.sh logs [WORKER]          # follow one worker's log (default 0, the one that narrates)
#   launch/tpu_pod.sh stop                   # SIGTERM: every worker finishes its step, checkpoints, exits
#   launch/tpu_pod.sh delete
#
# Every worker runs the same program (JAX's multi-controller model). `run` reads the worker's index
# and the pod's endpoints from the TPU VM metadata server and exports JAX_COORDINATOR_ADDRESS /
# JAX_NUM_PROCESSES / JAX_PROCESS_ID, which `facialr1_jax.parallel.initialize_if_multihost` turns into
# `jax.distributed.initialize(...)` (the helper would also detect the TPU VM by itself; the explicit
# variables fix the coordinator port and process order). The WORKDIR must be one folder that every
# worker sees (a gcsfuse mount, an NFS / Filestore share, or gs://bucket/path directly, with gcsfs
# installed): orbax writes each process's shards of one checkpoint into it.
# Data is read from local disks (copy it with `data`). See docs/scaling.md.
#
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TPU_NAME="${TPU_NAME:-}"                       # name of the TPU VM (pod slice)
ZONE="${ZONE:-}"                               # e.g. us-east5-a (v5p), us-central2-b (v4), europe-west4-b
PROJECT="${PROJECT:-}"                         # gcloud project; empty = gcloud's default
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-32}" # v5p-32 = 16 chips on 4 workers; v4-32, v5litepod-16, ...
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"  # TPU software version matching the accelerator
SPOT="${SPOT:-0}"                              # 1 = spot capacity (cheaper, preemptible: runs resume)
REMOTE_DIR="${REMOTE_DIR:-facialr1_jax}"       # checkout location on every worker (relative to $HOME)
JAX_VERSION="${JAX_VERSION:-0.10.2}"           # must match setup.py's pin
PYTHON="${PYTHON:-python3}"
BUCKET="${BUCKET:-}"                           # for `mount`
MOUNT_POINT="${MOUNT_POINT:-/mnt/${BUCKET}}"
DATA_SRC="${DATA_SRC:-}"                       # for `data`: gs:// folder to copy
LOCAL_DATA="${LOCAL_DATA:-/data}"              # where `data` puts it on every worker
CONFIG="${CONFIG:-configs/sft.py:qwen2_5_vl_7b}"
WORKDIR="${WORKDIR:-}"                         # shared folder for checkpoints and logs (see above)
TRAIN_FLAGS="${TRAIN_FLAGS:-}"                 # extra flags for launch/train.py, e.g. --config.mesh.tensor=2
RUN_NAME="${RUN_NAME:-facialr1}"               # names the log and pid files under ~/logs on the workers
COORDINATOR_PORT="${COORDINATOR_PORT:-8476}"
DRY_RUN="${DRY_RUN:-0}"

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

require() {
  local name
  for name in "$@"; do
    [[ -n "${!name}" ]] || die "set $name (see the header of launch/tpu_pod.sh)"
  done
}

# gcloud compute tpus tpu-vm <verb> ... with the zone and project.
tpu_vm() {
  local command=(gcloud compute tpus tpu-vm "$@" "--zone=${ZONE}")
  [[ -n "$PROJECT" ]] && command+=("--project=${PROJECT}")
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${command[@]}"
    echo
  else
    "${command[@]}"
  fi
}

# Runs a bash script on every worker at once.
on_all_workers() {
  tpu_vm ssh "$TPU_NAME" --worker=all --command="$1"
}

# `NAME=value; ` assignments, quoted for the remote shell.
remote_assignments() {
  local name
  for name in "$@"; do
    printf '%s=%q; ' "$name" "${!name}"
  done
}

cmd_create() {
  require TPU_NAME ZONE
  local extra=()
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  tpu_vm create "$TPU_NAME" "--accelerator-type=${ACCELERATOR_TYPE}" "--version=${RUNTIME_VERSION}" "${extra[@]}"
}

cmd_setup() {
  require TPU_NAME ZONE
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    echo "tpu_pod.sh: warning: uncommitted changes are NOT shipped (setup copies git HEAD)" >&2
  fi
  local archive
  archive="$(mktemp -d)/facialr1_jax.tar.gz"
  git -C "$REPO_ROOT" archive --format=tar.gz -o "$archive" HEAD
  tpu_vm scp "$archive" "${TPU_NAME}:~/facialr1_jax.tar.gz" --worker=all
  on_all_workers "$(remote_assignments REMOTE_DIR JAX_VERSION PYTHON)"'
    set -euo pipefail
    rm -rf "$HOME/$REMOTE_DIR" && mkdir -p "$HOME/$REMOTE_DIR"
    tar -xzf "$HOME/facialr1_jax.tar.gz" -C "$HOME/$REMOTE_DIR"
    "$PYTHON" -m pip install -q --upgrade pip
    "$PYTHON" -m pip install -q "jax[tpu]==$JAX_VERSION" -e "$HOME/$REMOTE_DIR"
    "$PYTHON" -c "import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)"'
}

cmd_mount() {
  require TPU_NAME ZONE BUCKET
  on_all_workers "$(remote_assignments BUCKET MOUNT_POINT)"'
    set -euo pipefail
    if ! command -v gcsfuse >/dev/null; then
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --yes --dearmor -o /usr/share/keyrings/cloud.google.gpg
      echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
    fi
    sudo mkdir -p "$MOUNT_POINT" && sudo chown "$USER" "$MOUNT_POINT"
    mountpoint -q "$MOUNT_POINT" || gcsfuse --implicit-dirs --rename-dir-limit=200000 "$BUCKET" "$MOUNT_POINT"
    echo "$(hostname): gs://$BUCKET at $MOUNT_POINT"'
}

cmd_data() {
  require TPU_NAME ZONE DATA_SRC
  on_all_workers "$(remote_assignments DATA_SRC LOCAL_DATA)"'
    set -euo pipefail
    sudo mkdir -p "$LOCAL_DATA" && sudo chown "$USER" "$LOCAL_DATA"
    gcloud storage cp -r "$DATA_SRC" "$LOCAL_DATA/"
    echo "$(hostname): $(du -sh "$LOCAL_DATA" | cut -f1) in $LOCAL_DATA"'
}

cmd_run() {
  require TPU_NAME ZONE WORKDIR CONFIG
  on_all_workers "$(remote_assignments REMOTE_DIR PYTHON CONFIG WORKDIR TRAIN_FLAGS RUN_NAME COORDINATOR_PORT)"'
    set -euo pipefail
    metadata() { curl -sf -H "Metadata-Flavor: Google" "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }
    worker="$(metadata agent-worker-number)"
    endpoints="$(metadata worker-network-endpoints)"   # one "name:port:ip" per worker, in worker order
    coordinator="$(echo "$endpoints" | cut -d, -f1 | awk -F: "{print \$NF}")"
    processes="$(echo "$endpoints" | tr , "\n" | grep -c .)"
    export JAX_COORDINATOR_ADDRESS="$coordinator:$COORDINATOR_PORT" JAX_NUM_PROCESSES="$processes" JAX_PROCESS_ID="$worker"
    mkdir -p "$HOME/logs"
    log="$HOME/logs/$RUN_NAME-worker$worker.log"
    cd "$HOME/$REMOTE_DIR"
    # shellcheck disable=SC2086  (TRAIN_FLAGS is a list of flags)
    setsid nohup "$PYTHON" launch/train.py --config="$CONFIG" --workdir="$WORKDIR" $TRAIN_FLAGS >"$log" 2>&1 </dev/null &
    echo $! >"$HOME/logs/$RUN_NAME.pid"
    echo "worker $worker of $processes: pid $! (coordinator $JAX_COORDINATOR_ADDRESS), log $log"'
}

cmd_logs() {
  require TPU_NAME ZONE
  local worker="${1:-0}"
  tpu_vm ssh "$TPU_NAME" "--worker=${worker}" \
    --command="tail -n 200 -F \"\$HOME/logs/${RUN_NAME}-worker${worker}.log\""
}

cmd_status() {
  require TPU_NAME ZONE
  tpu_vm describe "$TPU_NAME" --format="value(state,health,acceleratorType)"
  on_all_workers "$(remote_assignments RUN_NAME)"'
    pid="$(cat "$HOME/logs/$RUN_NAME.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then state="running (pid $pid)"; else state="not running"; fi
    echo "$(hostname): $RUN_NAME $state; $(tail -n 1 "$HOME"/logs/"$RUN_NAME"-worker*.log 2>/dev/null)"'
}

cmd_stop() {
  require TPU_NAME ZONE
  # SIGTERM is the preemption signal: the step loop finishes the step in flight, saves a checkpoint
  # on every worker together, and exits; `run` again resumes from it.
  on_all_workers "$(remote_assignments RUN_NAME)"'
    pid="$(cat "$HOME/logs/$RUN_NAME.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null; then echo "$(hostname): SIGTERM sent to $pid"
    else echo "$(hostname): no running $RUN_NAME"; fi'
}

cmd_delete() {
  require TPU_NAME ZONE
  tpu_vm delete "$TPU_NAME" --quiet
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

main() {
  local command="${1:-}"
  shift || true
  case "$command" in
    create | setup | mount | data | run | logs | status | stop | delete) "cmd_${command}" "$@" ;;
    all) cmd_create && cmd_setup && cmd_run && cmd_logs 0 ;;
    "" | -h | --help | help) usage ;;
    *) die "unknown command '$command' (create, setup, mount, data, run, logs, status, stop, delete, all)" ;;
  esac
}

main "$@"
