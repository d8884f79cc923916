"""Stage 2 end to end on the built-in data: SFT warm start, rollouts, updates, report, exact resume.

A demo-preset model cut to one small decoder layer runs `run_grpo` for a few steps. The run that
stops after 2 steps and is continued to 4 reproduces the uninterrupted 4-step run exactly: same
prompts, same sampled rewards, same gradient norms (rollout keys derive from the step, the prompt
order is checkpointed, and the parameters are restored bit for bit). The interruption is a
preemption request after step 2, as SIGTERM would make it.
"""

import json
import os

import numpy as np
import pytest

from configs import grpo as grpo_config
from facialr1_jax.train import grpo_loop, loop
from facialr1_jax.train.metrics import read_jsonl_rows

OVERRIDES = json.dumps({"text_config": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                                        "num_attention_heads": 2, "num_key_value_heads": 1,
                                        "mrope_section": [4, 6, 6]},
                        "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 1,
                                          "out_hidden_size": 64, "fullatt_block_indexes": [0]}})


def _small_config(cache: str, num_steps: int):
    config = grpo_config.get_config()
    for section in (config, config.warm_start):
        section.data.builtin_dir = cache
        section.data.builtin_num_sft = 8
        section.data.builtin_num_rl = 12
        section.data.builtin_num_test = 4
        section.model.checkpoint = ""  # a fresh, smaller model
        section.model.preset_overrides = OVERRIDES
        section.logging.progress_bar = False
        section.logging.tensorboard = False
        section.logging.every_steps = 1
        section.checkpoint.async_save = False
    config.warm_start.sft.num_steps = 2
    config.warm_start.sft.batch_size = 4
    config.warm_start.sft.eval_num_examples = 2
    config.warm_start.sft.final_eval_num_examples = 2
    config.warm_start.sft.eval_batch_size = 2
    config.warm_start.sft.eval_max_new_tokens = 4
    config.grpo.num_steps = num_steps
    config.grpo.prompts_per_step = 2
    config.grpo.num_generations = 3
    config.grpo.max_new_tokens = 8
    config.grpo.eval_num_examples = 2
    config.grpo.eval_batch_size = 2
    config.grpo.beta = 0.04
    config.checkpoint.every_steps = 1
    return config


def _train_rows(workdir):
    return [row for row in read_jsonl_rows(os.path.join(workdir, "metrics.jsonl")) if row["split"] == "train"]


@pytest.mark.slow
def test_grpo_runs_from_sft_warm_start_and_resumes_exactly(tmp_path, monkeypatch):
    cache = str(tmp_path / "demo")
    full_dir, split_dir = str(tmp_path / "full"), str(tmp_path / "split")

    full = grpo_loop.run_grpo(_small_config(cache, 4), full_dir)
    assert full["status"] == "completed" and full["step"] == 4
    # The warm start trained stage 1 into WORKDIR/sft first.
    assert os.path.exists(os.path.join(full_dir, "sft", "sft_result.json"))
    assert full["initial_checkpoint"] == os.path.join(full_dir, "sft")
    for name in ("format_valid", "emotion_accuracy"):
        assert name in full["before"] and name in full["after"]
    report = open(os.path.join(full_dir, grpo_loop.REPORT_FILE), encoding="utf-8").read()
    assert "SFT (before)" in report and "emotion_accuracy" in report
    samples = read_jsonl_rows(os.path.join(full_dir, grpo_loop.SAMPLES_FILE))
    assert [row["step"] for row in samples] == [1, 2, 3, 4]

    # Same SFT warm start for the split run, so both start from identical weights.
    os.makedirs(split_dir)
    os.symlink(os.path.join(full_dir, "sft"), os.path.join(split_dir, "sft"))

    class PreemptedAfterTwoSteps(loop.PreemptionGuard):
        """Behaves as if SIGTERM arrived while step 2 was running."""

        checks = 0

        def should_stop(self):
            PreemptedAfterTwoSteps.checks += 1
            return PreemptedAfterTwoSteps.checks > 2

    monkeypatch.setattr(grpo_loop.loop, "PreemptionGuard", PreemptedAfterTwoSteps)
    stopped = grpo_loop.run_grpo(_small_config(cache, 4), split_dir)
    assert stopped["status"] == "preempted" and stopped["step"] == 2
    monkeypatch.undo()
    resumed = grpo_loop.run_grpo(_small_config(cache, 4), split_dir)
    assert resumed["status"] == "completed" and resumed["step"] == 4

    full_rows, split_rows = _train_rows(full_dir), _train_rows(split_dir)
    assert [r["step"] for r in split_rows] == [1, 2, 3, 4]
    for name in ("reward_total", "reward_format", "reward_au", "completion_length", "grad_norm", "kl"):
        np.testing.assert_array_equal([r[name] for r in split_rows], [r[name] for r in full_rows], err_msg=name)
    # Every row carries the per-step diagnostics the issue asks for.
    for name in ("reward_accuracy", "format_rate", "clip_fraction", "entropy_estimate", "zero_advantage_groups"):
        assert name in full_rows[-1]
