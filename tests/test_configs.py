"""Every shipped config loads and validates; validation rejects bad values with a clear message."""

import importlib

import pytest

from facialr1_jax import config_validation
from facialr1_jax import stages

CONFIG_VARIANTS = [
    ("sft", "demo"),
    ("sft", "qwen2_5_vl_3b"),
    ("sft", "qwen2_5_vl_7b"),
    ("grpo", "demo"),
    ("grpo", "qwen2_5_vl_3b"),
    ("grpo", "qwen2_5_vl_7b"),
    ("synth", "demo"),
    ("synth", "qwen2_5_vl_7b"),
    ("pipeline", "demo"),
    ("eval", "demo"),
    ("eval", "paper"),
]


@pytest.mark.parametrize("name,variant", CONFIG_VARIANTS)
def test_shipped_configs_load_and_validate(name, variant):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    assert config.stage == name
    assert config.stage in stages.STAGES
    for section in (config, config.get("warm_start")):
        if section is not None and section.data.source == "jsonl":
            # Real-data variants need paths from the user; with them filled in they are valid.
            section.data.train_jsonl = "train.jsonl"
            section.data.image_root = "images"
    config_validation.validate(config)


@pytest.mark.parametrize("name", ["sft", "grpo", "synth", "eval"])
def test_unknown_variant_is_a_clear_error(name):
    module = importlib.import_module(f"configs.{name}")
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        module.get_config("nope")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("optimizer.lr", -1.0, "config.optimizer.lr = -1.0 must be > 0"),
        ("optimizer.lr", float("nan"), "must be finite"),
        ("optimizer.schedule", "exp", "is not one of linear, cosine, constant"),
        ("grpo.num_generations", 1, "must be >= 2"),
        ("grpo.kl_estimator", "k2", "is not one of k1, k3"),
        ("grpo.top_p", 0.0, "in (0, 1]"),
        ("rewards.au_mode", "F1", "is not one of 2f1-1, f1"),
        ("data.on_error", "ignore", "is not one of raise, skip"),
        ("mesh.fsdp", 0, "-1 or >= 1"),
        ("grpo.prompts_per_step", True, "must be a number"),
    ],
)
def test_validation_names_key_and_rule(key, value, message):
    config = importlib.import_module("configs.grpo").get_config()
    section, field = key.split(".")
    with config.unlocked():
        config[section][field] = value
    with pytest.raises(config_validation.ConfigError) as info:
        config_validation.validate(config)
    assert message in str(info.value)
    assert key in str(info.value)


def test_min_pixels_above_max_pixels_is_rejected():
    config = importlib.import_module("configs.sft").get_config()
    config.data.min_pixels = 10_000_000
    with pytest.raises(config_validation.ConfigError, match="exceeds config.data.max_pixels"):
        config_validation.validate(config)


def test_jsonl_source_requires_paths():
    config = importlib.import_module("configs.sft").get_config()
    config.data.source = "jsonl"
    with pytest.raises(config_validation.ConfigError, match="train_jsonl"):
        config_validation.validate(config)


def test_missing_stage_module_names_its_issue(monkeypatch):
    monkeypatch.setitem(
        stages.STAGES, "sft", stages.StageEntry("facialr1_jax.no_such_module", "run", 99, "a future stage")
    )
    with pytest.raises(stages.StageUnavailableError, match="lands with issue #99"):
        stages.resolve_stage("sft")


def test_unknown_stage_lists_known_ones():
    with pytest.raises(stages.StageUnavailableError, match="known stages: pretrain, sft, grpo"):
        stages.resolve_stage("distill")


def test_nested_warm_start_is_validated_with_its_path():
    config = importlib.import_module("configs.grpo").get_config()
    config.warm_start.optimizer.lr = -2.0
    with pytest.raises(config_validation.ConfigError, match=r"config.warm_start.optimizer.lr = -2.0 must be > 0"):
        config_validation.validate(config)


@pytest.mark.parametrize("name", ["sft", "grpo"])
@pytest.mark.parametrize("variant", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
@pytest.mark.parametrize("devices", [8, 16])
def test_large_recipes_split_their_micro_batches_over_fsdp(name, variant, devices):
    """The 3B / 7B recipes use fsdp = all devices: their train micro-batches (and the SFT warm start's)
    must divide over 8 and 16 devices, or every device would compute every row."""
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    for section in (config, config.get("warm_start")):
        if section is None:
            continue
        assert section.mesh.data == 1 and section.mesh.fsdp == -1
        key, rows = config_validation.micro_batch_rows(section)
        assert rows % devices == 0, (section.stage, key, rows)
        config_validation.check_batch_split(section, {"data": 1, "fsdp": devices, "tensor": 1})


@pytest.mark.parametrize("micro,error", [(4, True), (0, False), (12, True), (16, False)])
def test_micro_batch_that_does_not_split_over_fsdp_names_the_knob(micro, error):
    config = importlib.import_module("configs.sft").get_config("qwen2_5_vl_7b")
    config.sft.micro_batch_size = micro  # 0 = the whole batch of 32
    mesh = {"data": 1, "fsdp": 8, "tensor": 1}
    if not error:
        config_validation.check_batch_split(config, mesh)
        return
    with pytest.raises(config_validation.ConfigError, match=rf"config\.sft\.micro_batch_size = {micro}: .*multiple of 8"):
        config_validation.check_batch_split(config, mesh)


def test_grpo_micro_batch_zero_counts_every_completion():
    config = importlib.import_module("configs.grpo").get_config("qwen2_5_vl_7b")
    config.grpo.micro_batch_size = 0
    config.grpo.prompts_per_step = 3  # 24 completions at once: not a multiple of 16
    config_validation.check_batch_split(config, {"data": 2, "fsdp": 4, "tensor": 1})  # 24 % 8 == 0
    with pytest.raises(config_validation.ConfigError, match=r"grpo\.micro_batch_size = 0 \(0: all prompts_per_step"):
        config_validation.check_batch_split(config, {"data": 1, "fsdp": 16, "tensor": 1})


def test_data_parallel_only_mesh_warns_instead(caplog):
    config = importlib.import_module("configs.sft").get_config("demo")
    config.sft.batch_size, config.sft.micro_batch_size = 4, 2
    with caplog.at_level("WARNING"):
        config_validation.check_batch_split(config, {"data": 8, "fsdp": 1, "tensor": 1})
    assert "sft.micro_batch_size" in caplog.text


def test_paper_evaluation_compares_answers_exactly_and_the_demo_normalises():
    from configs import eval as eval_config

    assert eval_config.get_config("paper").eval.normalize_emotions is False
    assert eval_config.get_config("demo").eval.normalize_emotions is True
