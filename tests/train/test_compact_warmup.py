"""The compact-target warm-up of SFT (`sft.compact_warmup_steps`): its training records, the two phase
configs, config checks, and the two-phase run (phase 2 starts from phase 1's weights; a run stopped
between the phases continues to the same model without repeating phase 1)."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

import configs.sft
from facialr1_jax import config_validation
from facialr1_jax.parallel import make_mesh
from facialr1_jax.train import checkpoint as ckpt
from facialr1_jax.train import sft
from facialr1_jax.train import state as state_lib
from facialr1_jax.train.metrics import read_jsonl_rows

from tests.train.test_sft_run import small_config


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    config = configs.sft.get_config()
    config.data.builtin_dir = str(tmp_path_factory.mktemp("demo"))
    config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = 8, 40, 4
    return config


def test_compact_records_are_labelled_faces_with_an_annotated_au_set(demo_config, tmp_path):
    config = demo_config.copy_and_resolve_references()
    description = sft.load_training_split(config, str(tmp_path))
    assert len(description) == 8 and all(r.description for r in description.records)

    config.data.target = "compact"
    stage1_only = sft.load_training_split(config, str(tmp_path))
    assert [r.id for r in stage1_only.records] == [r.id for r in description.records]

    config.sft.compact_records = "sft+rl"
    both = sft.load_training_split(config, str(tmp_path))
    rl_records = sft.datasets.load_split(config, "rl").records
    usable_rl = [r for r in rl_records if r.label is not None and (r.aus or r.dataset == "synthface")]
    assert len(usable_rl) < len(rl_records)  # the demo mix holds AU-only and emotion-only records
    assert [r.id for r in both.records] == [r.id for r in description.records] + [r.id for r in usable_rl]
    assert len(both) == len(both.source) == len({r.id for r in both.records})
    for index in (0, len(both) - 1):
        assert both.source[index]["record"] == both.records[index]
        assert both.source[index]["image_bytes"]


def test_the_phase_configs_switch_the_target_and_chain_the_weights():
    config = configs.sft.get_config()
    config.sft.compact_warmup_steps = 30
    config.sft.num_steps = 160
    warmup, description = sft.compact_warmup_phases(config, "/runs/a/compact_warmup")
    assert warmup.data.target == "compact" and warmup.sft.num_steps == 30
    assert warmup.sft.compact_warmup_steps == 0 and warmup.sft.vision_warmup_steps == config.sft.vision_warmup_steps
    assert warmup.model.checkpoint == config.model.checkpoint == ""
    assert warmup.sft.eval_every_steps == 0 and description.sft.eval_every_steps == config.sft.eval_every_steps
    assert description.data.target == "description" and description.sft.num_steps == 160
    assert description.model.checkpoint == "/runs/a/compact_warmup"
    assert description.sft.compact_warmup_steps == 0 and description.sft.vision_warmup_steps == 0
    assert config.sft.compact_warmup_steps == 30  # the given config is left as it was
    for phase in (warmup, description):
        config_validation.validate(phase)


def test_bad_compact_warmup_settings_are_config_errors():
    config = configs.sft.get_config()
    config.sft.compact_warmup_steps = -1
    with pytest.raises(config_validation.ConfigError, match=r"sft.compact_warmup_steps = -1 must be >= 0"):
        config_validation.validate(config)
    config.sft.compact_warmup_steps = 10
    config.data.target = "compact"
    with pytest.raises(config_validation.ConfigError, match=r"data.target must be 'description', not 'compact'"):
        config_validation.validate(config)


@pytest.fixture
def one_device(monkeypatch):
    monkeypatch.setattr(sft, "mesh_from_config", lambda config: make_mesh({"data": 1}, devices=jax.devices()[:1]))


def _two_phase_config(tmp_path):
    config = small_config(tmp_path, compact_warmup_steps=2, num_steps=2, final_eval_num_examples=1,
                          eval_max_new_tokens=4)
    config.checkpoint.async_save = False
    config_validation.validate(config)
    return config


def _final_params(workdir):
    model, _, info = ckpt.load_model(workdir)
    return info, state_lib.split_model(model)[1]


@pytest.mark.slow  # about a minute of CPU: three short SFT runs of a cut-down model with their evaluations
def test_two_phase_run_chains_the_phases_and_continues_after_a_stop_between_them(tmp_path, one_device):
    config = _two_phase_config(tmp_path)
    whole = tmp_path / "whole"
    result = sft.run_sft(config, str(whole))
    assert result["status"] == "completed" and result["step"] == 2
    assert result["compact_warmup"]["step"] == 2 and result["compact_warmup"]["vision_warmup"]["steps"] == 2
    warmup_dir = whole / sft.COMPACT_WARMUP_DIR
    compact_rows = [r for r in read_jsonl_rows(str(warmup_dir / "metrics.jsonl")) if r["split"] == "train"]
    description_rows = [r for r in read_jsonl_rows(str(whole / "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in compact_rows] == [1, 2] == [r["step"] for r in description_rows]
    # Compact replies are a handful of tokens, descriptions dozens.
    assert max(r["denominator"] for r in compact_rows) < min(r["denominator"] for r in description_rows) / 2
    info, params = _final_params(whole)
    assert info["meta"]["config"]["model"]["checkpoint"] == str(warmup_dir)
    assert info["meta"]["config"]["data"]["target"] == "description"
    _, warm_params = _final_params(warmup_dir)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(warm_params))]
    assert any(changed)

    # A run stopped between the phases (its folder holds the finished phase 1 only), then restarted:
    # phase 1 is not repeated and the final model is the uninterrupted run's, bit for bit.
    stopped = tmp_path / "stopped"
    shutil.copytree(warmup_dir, stopped / sft.COMPACT_WARMUP_DIR)
    rows_before = read_jsonl_rows(str(stopped / sft.COMPACT_WARMUP_DIR / "metrics.jsonl"))
    again = sft.run_sft(config, str(stopped))
    assert again["status"] == "completed" and again["compact_warmup"]["step"] == 2
    assert read_jsonl_rows(str(stopped / sft.COMPACT_WARMUP_DIR / "metrics.jsonl")) == rows_before
    _, resumed_params = _final_params(stopped)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["loss"] for r in read_jsonl_rows(str(stopped / "metrics.jsonl")) if r["split"] == "train"] == \
        [r["loss"] for r in description_rows]
