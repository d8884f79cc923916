"""run_sft in-process on a cut-down model: every artefact lands in the workdir and the model reloads."""

import json
import os

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

SMALL = {"text_config": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                         "num_attention_heads": 2, "num_key_value_heads": 1, "mrope_section": [4, 6, 6]},
         "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 1,
                           "out_hidden_size": 64, "fullatt_block_indexes": [0]}}


def small_config(tmp_path, **sft_changes):
    config = configs.sft.get_config()
    config.data.builtin_dir = str(tmp_path / "demo")
    config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = 12, 2, 3
    config.model.checkpoint = ""  # a fresh, smaller model
    config.model.preset_overrides = json.dumps(SMALL)
    config.mesh.data = 1
    config.sft.num_steps = 3
    config.sft.batch_size = 4
    config.sft.micro_batch_size = 2
    config.sft.eval_num_examples = 3
    config.sft.final_eval_num_examples = 3
    config.sft.eval_batch_size = 2
    config.sft.eval_max_new_tokens = 6
    config.logging.every_steps = 1
    config.logging.progress_bar = False
    config.optimizer.warmup_steps = 1
    for key, value in sft_changes.items():
        config.sft[key] = value
    config_validation.validate(config)
    return config


@pytest.fixture(autouse=True)
def one_device(monkeypatch):
    """The run's mesh uses every device; keep it to one so the test measures the stage, not 8 fake CPUs."""
    monkeypatch.setattr(sft, "mesh_from_config", lambda config: make_mesh({"data": 1}, devices=jax.devices()[:1]))


@pytest.mark.slow  # about 30 s of CPU: demo data, two compiles of the step, the generation engine
def test_run_sft_writes_its_artefacts_and_the_model_reloads(tmp_path):
    workdir = tmp_path / "run"
    result = sft.run_sft(small_config(tmp_path), str(workdir))
    assert result["status"] == "completed" and result["step"] == 3
    assert result["train_records"] == 12 and result["test_records"] == 3

    files = set(os.listdir(workdir))
    assert {"metrics.jsonl", "batches.jsonl", "sft_result.json", "loss_curve.png", "tensorboard", "checkpoints",
            "data_report-sft.json", "data_report-test.json"} <= files
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))
    train_rows = [r for r in read_jsonl_rows(str(workdir / "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train_rows)
    eval_rows = [r for r in read_jsonl_rows(str(workdir / "metrics.jsonl")) if r["split"] == "eval"]
    assert eval_rows[-1]["step"] == 3 and eval_rows[-1]["target_tokens"] > 0
    if result["generation_available"]:
        assert eval_rows[-1]["generated_examples"] == 3
        assert "format_valid" in eval_rows[-1]
        assert len(read_jsonl_rows(str(workdir / "predictions-test.jsonl"))) == 3
    batches = read_jsonl_rows(str(workdir / "batches.jsonl"))
    assert [len(b["ids"]) for b in batches] == [4, 4, 4]
    assert len({i for b in batches for i in b["ids"]}) == 12  # 12 records, 3 x 4 draws: one epoch, each once

    model, tokenizer, info = ckpt.load_model(workdir)
    assert info["step"] == 3 and info["meta"]["stage"] == "sft"
    assert model.config.text_config.num_hidden_layers == 1
    restored = ckpt.Checkpointer(workdir).restore(3, *_abstract_like(model))
    _, params = state_lib.split_model(model)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # A second call finds the finished run and only re-evaluates.
    again = sft.run_sft(small_config(tmp_path), str(workdir))
    assert again["status"] == "completed" and again["step"] == 3
    assert len(read_jsonl_rows(str(workdir / "batches.jsonl"))) == 3


def _abstract_like(model):
    """A (target state, shardings) pair matching the run's TrainState, for Checkpointer.restore."""
    from facialr1_jax.train import optim

    config = configs.sft.get_config()
    tx, _ = optim.make_optimizer(config.optimizer, 3)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    _, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    return state, shardings


def test_records_without_description_are_reported_or_skipped(tmp_path):
    from facialr1_jax.data import datasets
    from facialr1_jax.fea.records import RecordError, write_jsonl

    config = small_config(tmp_path)
    builtin = datasets.load_split(config, "sft")
    records = list(builtin.records)
    records[2] = records[2].replace(description="")
    jsonl = tmp_path / "train.jsonl"
    write_jsonl(records, jsonl)
    config.data.source = "jsonl"
    config.data.train_jsonl = str(jsonl)
    config.data.image_root = builtin.image_root
    with pytest.raises(RecordError, match=r"record '.*' has no description.*1 such records"):
        datasets.load_split(config, "sft", workdir=str(tmp_path), require_description=True)
    config.data.on_error = "skip"
    split = datasets.load_split(config, "sft", workdir=str(tmp_path), require_description=True)
    assert len(split) == 11 and records[2].id not in {r.id for r in split.records}
    report = json.loads((tmp_path / "data_report-sft.json").read_text())
    assert report["records_without_description"] == [records[2].id]
