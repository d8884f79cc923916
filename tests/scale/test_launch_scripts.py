"""The TPU pod and SLURM launch scripts: `bash -n` clean, and their launch logic run locally.

`gcloud`, `curl` (the TPU metadata server), `scontrol` and `srun` are replaced by small fakes on
PATH, and "python" by a script that records its arguments and the JAX_* environment it was given,
so the tests check what every worker / task would actually start, without a cloud or a cluster.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
GPU_CLUSTER = os.path.join(REPO, "launch", "gpu_cluster.sh")

RECORDING_PYTHON = """#!/usr/bin/env bash
out="$RECORD_DIR/process-${JAX_PROCESS_ID}.json"
printf '{"argv": [' > "$out.tmp"
sep=""; for a in "$@"; do printf '%s"%s"' "$sep" "$a" >> "$out.tmp"; sep=", "; done
printf '], "coordinator": "%s", "processes": "%s", "process": "%s"}' \\
  "$JAX_COORDINATOR_ADDRESS" "$JAX_NUM_PROCESSES" "$JAX_PROCESS_ID" >> "$out.tmp"
mv "$out.tmp" "$out"
"""

# `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=SCRIPT`: runs SCRIPT once per worker,
# each with its own HOME and metadata (FAKE_WORKER); other verbs are recorded only.
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "gcloud $*" >> "$RECORD_DIR/gcloud.log"
script=""; workers=""
for a in "$@"; do
  case "$a" in --command=*) script="${a#--command=}" ;; --worker=*) workers="${a#--worker=}" ;; esac
done
[[ -z "$script" ]] && exit 0
[[ "$workers" == all ]] && workers="0 1 2 3"
for w in $workers; do
  mkdir -p "$RECORD_DIR/home$w"
  HOME="$RECORD_DIR/home$w" FAKE_WORKER=$w bash -c "$script" || exit 1
done
"""

FAKE_CURL = """#!/usr/bin/env bash
case "${@: -1}" in
  */agent-worker-number) echo -n "$FAKE_WORKER" ;;
  */worker-network-endpoints)
    echo -n "unknown:8470:10.0.0.5,unknown:8470:10.0.0.6,unknown:8470:10.0.0.7,unknown:8470:10.0.0.8" ;;
  *) exit 22 ;;
esac
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && printf 'gpu-node-07\\ngpu-node-08\\n'
"""

# srun runs the task command once per task, SLURM_PROCID = 0..SLURM_NTASKS-1.
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" || exit 1; done
"""


def _write_executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture()
def fakes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("curl", FAKE_CURL), ("scontrol", FAKE_SCONTROL),
                       ("srun", FAKE_SRUN), ("fake-python", RECORDING_PYTHON)):
        _write_executable(bin_dir / name, text)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD_DIR": str(tmp_path), "HOME": str(tmp_path),
           "PYTHON": str(bin_dir / "fake-python")}
    return tmp_path, env


def _records(directory, count, timeout=120.0):  # generous: fake workers start slowly on a loaded machine
    deadline = time.time() + timeout
    paths = [directory / f"process-{i}.json" for i in range(count)]
    while not all(p.exists() for p in paths) and time.time() < deadline:
        time.sleep(0.05)  # the pod script starts each worker's process in the background
    return [json.loads(p.read_text()) for p in paths]


@pytest.mark.parametrize("script", [TPU_POD, GPU_CLUSTER])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    assert os.access(script, os.X_OK)


def test_tpu_pod_run_starts_one_process_per_worker_with_the_coordinator_of_worker_0(fakes):
    tmp_path, env = fakes
    env.update(TPU_NAME="fr1", ZONE="us-east5-a", WORKDIR="/mnt/shared/run one", CONFIG="configs/grpo.py:qwen2_5_vl_7b",
               TRAIN_FLAGS="--config.mesh.tensor=2 --config.grpo.num_steps=5", COORDINATOR_PORT="9999")
    for worker in range(4):  # `setup` has put the checkout there
        (tmp_path / f"home{worker}" / "facialr1_jax").mkdir(parents=True)
    done = subprocess.run([TPU_POD, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = _records(tmp_path, 4)
    assert [r["process"] for r in records] == ["0", "1", "2", "3"]
    assert {r["coordinator"] for r in records} == {"10.0.0.5:9999"}
    assert {r["processes"] for r in records} == {"4"}
    assert records[2]["argv"] == ["launch/train.py", "--config=configs/grpo.py:qwen2_5_vl_7b",
                                  "--workdir=/mnt/shared/run one", "--config.mesh.tensor=2",
                                  "--config.grpo.num_steps=5"]
    pid_file = tmp_path / "home3" / "logs" / "facialr1.pid"
    assert pid_file.read_text().strip().isdigit()
    assert "worker 3 of 4" in done.stdout


def test_tpu_pod_commands_name_the_pod_and_zone(fakes):
    tmp_path, env = fakes
    env.update(TPU_NAME="fr1", ZONE="us-east5-a", PROJECT="my-project", ACCELERATOR_TYPE="v5p-64", SPOT="1")
    assert subprocess.run([TPU_POD, "create"], env=env, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run([TPU_POD, "delete"], env=env, capture_output=True, timeout=30).returncode == 0
    log = (tmp_path / "gcloud.log").read_text().splitlines()
    assert log[0] == ("gcloud compute tpus tpu-vm create fr1 --accelerator-type=v5p-64 --version=v2-alpha-tpuv5 --spot "
                      "--zone=us-east5-a --project=my-project")
    assert log[1] == "gcloud compute tpus tpu-vm delete fr1 --quiet --zone=us-east5-a --project=my-project"


def test_tpu_pod_refuses_to_run_without_a_workdir(fakes):
    _, env = fakes
    env.update(TPU_NAME="fr1", ZONE="us-east5-a")
    done = subprocess.run([TPU_POD, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "set WORKDIR" in done.stderr
    done = subprocess.run([TPU_POD, "launch"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown command 'launch'" in done.stderr


def test_gpu_cluster_starts_one_process_per_task(fakes):
    tmp_path, env = fakes
    env.update(SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_NTASKS="2",
               SLURM_SUBMIT_DIR=REPO)
    workdir = tmp_path / "shared" / "run"
    done = subprocess.run([GPU_CLUSTER, "configs/sft.py:qwen2_5_vl_7b", str(workdir), "--config.sft.num_steps=3"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = _records(tmp_path, 2)
    assert [r["process"] for r in records] == ["0", "1"]
    assert {r["coordinator"] for r in records} == {f"gpu-node-07:{20000 + 123456 % 20000}"}
    assert {r["processes"] for r in records} == {"2"}
    assert records[1]["argv"] == ["launch/train.py", "--config=configs/sft.py:qwen2_5_vl_7b", f"--workdir={workdir}",
                                  "--config.sft.num_steps=3"]
    assert workdir.is_dir()


def test_gpu_cluster_needs_its_arguments(fakes):
    _, env = fakes
    env.update(SLURM_JOB_ID="1")
    done = subprocess.run([GPU_CLUSTER, "configs/sft.py"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr
