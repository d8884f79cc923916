#!/usr/bin/env bash
# Facial-R1 on a SLURM GPU cluster: one process per node, all of the node's GPUs, jax.distributed over
# the nodes. Submit from the repository root on a shared filesystem:
#
#   sbatch --nodes=2 launch/gpu_cluster.sh configs/sft.py:qwen2_5_vl_7b /shared/runs/sft7b \
#       --config.model.checkpoint=/shared/models/Qwen2.5-VL-7B-Instruct --config.data.train_jsonl=...
#   sbatch --nodes=4 launch/gpu_cluster.sh configs/grpo.py:qwen2_5_vl_7b /shared/runs/grpo7b \
#       --config.grpo.init_from=/shared/runs/sft7b --config.mesh.tensor=2
#
# Arguments: CONFIG WORKDIR [more launch/train.py flags]. WORKDIR must be on a filesystem every node
# sees (orbax writes each process's shards of a checkpoint into it). The first node of the allocation
# is the coordinator; every task exports JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
# which `facialr1_jax.parallel.initialize_if_multihost` turns into `jax.distributed.initialize(...)`
# with every local GPU visible. Install once per cluster (a shared virtualenv):
#   python -m pip install "jax[cuda12]==0.10.2" -e .
# `scancel --signal=TERM JOBID` stops the job cleanly: each process finishes its step, all save a
# checkpoint together, and resubmitting the same command resumes. See docs/scaling.md.
#
#SBATCH --job-name=facialr1
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch [--nodes=N] launch/gpu_cluster.sh CONFIG WORKDIR [launch/train.py flags...]" >&2
  exit 2
fi
: "${SLURM_JOB_ID:?submit with sbatch (or run inside an salloc allocation)}"

CONFIG="$1"
WORKDIR="$2"
shift 2
PYTHON="${PYTHON:-python}"
REPO_ROOT="${SLURM_SUBMIT_DIR:-$(pwd)}"

coordinator_host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')"  # awk reads to the end: no SIGPIPE under pipefail
export JAX_COORDINATOR_ADDRESS="${coordinator_host}:${JAX_COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export JAX_NUM_PROCESSES="${SLURM_NTASKS:-$SLURM_NNODES}"
# GPU memory: let XLA take most of it up front (the plan in docs/scaling.md assumes it may), and
# overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
mkdir -p "$WORKDIR"

echo "facialr1: job $SLURM_JOB_ID, $JAX_NUM_PROCESSES processes, coordinator $JAX_COORDINATOR_ADDRESS"
# The task's rank becomes its JAX process id; `exec` so that SIGTERM reaches Python directly.
srun --kill-on-bad-exit=1 --chdir="$REPO_ROOT" bash -c \
  'export JAX_PROCESS_ID="$SLURM_PROCID"; exec "$0" launch/train.py --config="$1" --workdir="$2" "${@:3}"' \
  "$PYTHON" "$CONFIG" "$WORKDIR" "$@"
