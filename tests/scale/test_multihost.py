"""Two `jax.distributed` processes on CPU (one device each) train, checkpoint and restore together.

`multihost_sft_worker.py` runs in two processes joined through JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID (the environment `parallel.initialize_if_multihost` reads). Both
report the same held-out loss and greedy completions of the fresh model and the same losses as one
process running the same steps on one device (batches placed by `step.put_batch`: each row counted
once, not once per host); the orbax checkpoint
they write together restores bit-exactly into the training shardings, with each process's data
iterator state; a step from the restored state repeats the uninterrupted one; and only process 0
wrote metrics.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from facialr1_jax.parallel import TRAINING_RULES, make_mesh
from facialr1_jax.parallel.planning import synthetic_sft_batch
from facialr1_jax.train import evaluation
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.metrics import read_metrics
from facialr1_jax.train.sft import sft_loss
from tests.scale import scale_setup

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_sft_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_workers(workdir) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # SIGKILL: jax.distributed traps SIGTERM (preemption notice), so a hung worker outlives a plain timeout.
    return [subprocess.Popen(["timeout", "-s", "KILL", str(WORKER_TIMEOUT_S), sys.executable, WORKER, str(workdir)],
                             env={**env, "JAX_PROCESS_ID": str(index)}, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for index in range(2)]


def _one_process_reference() -> tuple[list[dict], dict]:
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model, tx, schedule = scale_setup.model_and_optimizer(mesh)
    model_def, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    eval_step = step_lib.EvalStep(model_def, sft_loss, shardings.params, mesh, rules=TRAINING_RULES)
    fresh = {"held_out": evaluation.held_out_loss(eval_step, state.params, scale_setup.held_out_host_batches()),
             "texts": scale_setup.greedy_evaluator(None).generate_texts(model_def.merge(state.params),
                                                                         scale_setup.greedy_prompts())}
    train_step = step_lib.TrainStep(model_def, sft_loss, tx, schedule, shardings, mesh,
                                    rules=TRAINING_RULES)
    rows, compiled = [], None
    for seed in range(4):
        batch = synthetic_sft_batch(scale_setup.CONFIG, scale_setup.MULTIHOST_SFT_SHAPE, **scale_setup.SFT_BATCH,
                                    seed=seed)
        batch = step_lib.put_batch(batch, step_lib.batch_shardings(batch, mesh))
        compiled = compiled or scale_setup.aot_compile(train_step, state, batch)
        state, metrics = compiled(state, batch)
        rows.append({k: float(metrics[k]) for k in ("loss", "grad_norm", "denominator")})
    return rows, fresh


def test_two_processes_train_checkpoint_and_restore(tmp_path, monkeypatch):
    workers = _start_workers(tmp_path)
    monkeypatch.setattr(evaluation, "pad_id_of", lambda tokenizer: 0)  # as in the workers
    reference, fresh = _one_process_reference()  # computed while the workers run
    outputs = [worker.communicate(timeout=WORKER_TIMEOUT_S + 30)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]
    results = sorted((json.loads(line[len("RESULT "):]) for out in outputs for line in out.splitlines()
                      if line.startswith("RESULT ")), key=lambda r: r["process"])
    assert [r["process"] for r in results] == [0, 1], outputs

    assert fresh["held_out"]["target_tokens"] > 0 and len(fresh["texts"]) == 3 and all(fresh["texts"])
    for result in results:
        held_out = result["fresh"]["held_out"]
        assert held_out["target_tokens"] == fresh["held_out"]["target_tokens"]
        np.testing.assert_allclose(held_out["loss"], fresh["held_out"]["loss"], rtol=1e-5)
        assert result["fresh"]["texts"] == fresh["texts"]
        for ours, theirs in zip(result["steps"] + [result["continued"]], reference, strict=True):
            assert ours["denominator"] == theirs["denominator"]  # each row counted once, not once per host
            np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
            np.testing.assert_allclose(ours["grad_norm"], theirs["grad_norm"], rtol=1e-5)
        assert result["restored_step"] == 3
        assert result["params_equal"] and result["placement_kept"]
        assert result["local_param_shards"] > 0
        assert result["data_state"] == {"batches_seen": 3, "process": result["process"]}
        assert result["resumed"]["loss"] == result["continued"]["loss"]
        assert result["resumed"]["grad_norm"] == result["continued"]["grad_norm"]

    # Files: one checkpoint written by both processes (one data-state file each), metrics by process 0 only.
    step_dir = tmp_path / "checkpoints" / "3"
    assert sorted(p.name for p in (step_dir / "data").iterdir() if p.suffix == ".json") == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert [row["step"] for row in read_metrics(str(tmp_path), split="train")] == [1, 2, 3, 4]
