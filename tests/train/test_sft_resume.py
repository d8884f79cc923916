"""Stage 1 end to end on the built-in data: SIGTERM mid-run, resume, and the exact same trajectory.

A small model (the demo preset cut to one decoder layer and one vision block through
`model.preset_overrides`) trains for a few steps three ways:
  A. uninterrupted, N steps;
  B. launched with `launch/train.py` in a subprocess that receives SIGTERM once it has logged step k
     (it finishes the step in flight, checkpoints and exits 0), then relaunched into the same workdir.
The per-step losses of A and B are equal bit for bit on CPU, and the record ids of every step's
batch (batches.jsonl) are identical: nothing seen twice, nothing skipped.

Three launcher runs (imports, compilation, data) take about 75 s of CPU, hence `slow`; the same
guarantee is checked in-process in seconds by tests/train/test_sft_loop_resume.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from facialr1_jax.train.metrics import read_jsonl_rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 8
STOP_AFTER = 3

OVERRIDES = json.dumps({"text_config": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                                        "num_attention_heads": 2, "num_key_value_heads": 1,
                                        "mrope_section": [4, 6, 6]},
                        "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 1,
                                          "out_hidden_size": 64, "fullatt_block_indexes": [0]}})


def _flags(workdir, cache):
    return [
        f"--workdir={workdir}",
        f"--config.data.builtin_dir={cache}",
        "--config.data.builtin_num_sft=20",
        "--config.data.builtin_num_rl=4",
        "--config.data.builtin_num_test=4",
        "--config.model.checkpoint=",
        f"--config.model.preset_overrides={OVERRIDES}",
        f"--config.sft.num_steps={TOTAL_STEPS}",
        "--config.sft.batch_size=4",
        "--config.sft.micro_batch_size=2",
        "--config.sft.eval_num_examples=2",
        "--config.sft.final_eval_num_examples=2",
        "--config.sft.eval_batch_size=2",
        "--config.sft.eval_max_new_tokens=4",
        "--config.checkpoint.every_steps=100",
        "--config.checkpoint.async_save=True",
        "--config.logging.every_steps=1",
        "--config.logging.progress_bar=False",
        "--config.logging.tensorboard=False",
        "--config.optimizer.warmup_steps=2",
    ]


def _env(cache):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    # Later runs reuse the first run's compiled programs.
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "xla")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _command(workdir, cache):
    return [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={REPO}/configs/sft.py",
            *_flags(workdir, cache)]


def _train_losses(workdir):
    return [(row["step"], row["loss"]) for row in read_jsonl_rows(os.path.join(workdir, "metrics.jsonl"))
            if row["split"] == "train"]


def _batches(workdir):
    return [(row["step"], row["ids"]) for row in read_jsonl_rows(os.path.join(workdir, "batches.jsonl"))]


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path):
    cache = str(tmp_path / "cache")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    env = _env(cache)

    done = subprocess.run(_command(reference, cache), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(_command(resumed, cache), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if len(_batches(resumed)) >= STOP_AFTER:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    interrupted = json.loads((resumed / "sft_result.json").read_text())
    assert interrupted["status"] == "preempted"
    stopped_at = interrupted["step"]
    assert STOP_AFTER <= stopped_at < TOTAL_STEPS, "the run must stop part-way for this test to mean anything"
    assert sorted(os.listdir(resumed / "checkpoints")) == [str(stopped_at)]

    done = subprocess.run(_command(resumed, cache), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    result = json.loads((resumed / "sft_result.json").read_text())
    assert result["status"] == "completed" and result["step"] == TOTAL_STEPS

    expected = _train_losses(reference)
    assert [step for step, _ in expected] == list(range(1, TOTAL_STEPS + 1))
    assert _train_losses(resumed) == expected  # bit-for-bit equal floats, step by step

    reference_batches, resumed_batches = _batches(reference), _batches(resumed)
    assert resumed_batches == reference_batches
    all_ids = [i for _, ids in reference_batches for i in ids]
    # 8 steps x 4 = 32 draws from 20 records: the first 20 are one permutation (each record once).
    assert sorted(all_ids[:20]) == sorted(set(all_ids[:20])) and len(set(all_ids[:20])) == 20
