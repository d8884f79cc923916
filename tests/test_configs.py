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
    ("grpo", "task_specific"),
    ("synth", "demo"),
    ("synth", "qwen2_5_vl_7b"),
    ("pipeline", "demo"),
    ("pipeline", "qwen2_5_vl_3b"),
    ("pipeline", "qwen2_5_vl_7b"),
    ("pipeline", "paper"),
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


@pytest.mark.parametrize("name", ["sft", "grpo", "synth", "eval", "pipeline"])
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


# ------------------------------------------------------------------- the paper variants (issue 22)
PAPER_VARIANTS = [("sft", "qwen2_5_vl_3b"), ("sft", "qwen2_5_vl_7b"), ("grpo", "qwen2_5_vl_3b"),
                  ("grpo", "qwen2_5_vl_7b"), ("grpo", "task_specific"), ("synth", "qwen2_5_vl_7b"),
                  ("eval", "paper"), ("pipeline", "qwen2_5_vl_7b"), ("pipeline", "paper")]


@pytest.mark.parametrize("name,variant", PAPER_VARIANTS)
def test_paper_variants_keep_images_up_to_the_references_pixel_cap(name, variant):
    from configs import paper
    from facialr1_jax.data.images import ImageConfig

    config = importlib.import_module(f"configs.{name}").get_config(variant)
    for section in (config, config.get("warm_start")):
        if section is None:
            continue
        assert section.data.max_pixels == 12845056 == paper.REFERENCE_MAX_PIXELS
        assert section.data.min_pixels == 3136
        assert section.data.prompt_variant == "full" and section.data.source == "jsonl"
        # A BP4D frame (1040 x 1392) keeps its size at this cap and its prompt fits the budget (the
        # full instruction is about 450 tokens).
        grid = ImageConfig(min_pixels=3136, max_pixels=section.data.max_pixels).grid_thw(1040, 1392)
        image_tokens = int(grid[0] * grid[1] * grid[2]) // 4
        assert image_tokens == 1850
        assert image_tokens + 2 + 450 < section.data.max_prompt_tokens


def test_the_pixel_cap_comment_names_the_knob_to_lower_it():
    import inspect

    from configs import paper

    source = inspect.getsource(paper)
    assert "lower data.max_pixels" in source.lower()
    for name in ("sft", "grpo", "synth", "eval"):
        text = inspect.getsource(importlib.import_module(f"configs.{name}"))
        assert "lower data.max_pixels" in text, name


def test_the_planner_plans_the_largest_image_a_prompt_can_hold():
    from configs import sft
    from facialr1_jax.parallel import planning

    # At the reference cap the largest square image is 16,384 merged tokens: more than a prompt holds.
    assert planning.image_grid_for(3136, 12845056) == (1, 256, 256)
    config = sft.get_config("qwen2_5_vl_7b")
    grid = planning.image_grid_for(config.data.min_pixels, config.data.max_pixels,
                                   config.data.max_prompt_tokens)
    tokens = grid[0] * grid[1] * grid[2] // 4
    assert tokens + 2 < config.data.max_prompt_tokens
    assert tokens + 2 + (2 * grid[1] + 1) >= config.data.max_prompt_tokens - 200  # the next size would not fit
    # A cap whose images always fit is planned as before.
    assert planning.image_grid_for(3136, 448 * 448, 1536) == planning.image_grid_for(3136, 448 * 448) == (1, 32, 32)


@pytest.mark.parametrize("name,variant,top_k,temperature", [
    ("grpo", "demo", 0, 0.7), ("grpo", "qwen2_5_vl_3b", 50, 1.0), ("grpo", "qwen2_5_vl_7b", 50, 1.0),
    ("grpo", "task_specific", 50, 1.0), ("pipeline", "demo", 0, 0.7), ("pipeline", "paper", 50, 1.0)])
def test_paper_grpo_samples_with_top_k_50(name, variant, top_k, temperature):
    """The paper variants sample as the reference does (top-k 50 at temperature 1); the small demo
    policy samples cooler (configs/grpo.py)."""
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    assert config.grpo.top_k == top_k
    assert config.grpo.temperature == temperature


def test_seed_flag_seeds_the_warm_start_too():
    config = importlib.import_module("configs.grpo").get_config()
    config.seed = 2
    assert config.warm_start.seed == 2


def test_paper_variants_share_one_helper_for_model_and_data():
    from configs import grpo, paper, sft, synth

    for config in (sft.get_config("qwen2_5_vl_7b"), grpo.get_config("qwen2_5_vl_7b")):
        assert (config.model.dtype, config.model.param_dtype, config.model.remat) == ("bfloat16", "float32", True)
        assert (config.mesh.fsdp, config.mesh.data) == (-1, 1)
    inference = synth.get_config("qwen2_5_vl_7b")
    assert (inference.model.dtype, inference.model.param_dtype) == ("bfloat16", "bfloat16")
    with pytest.raises(ValueError, match="unknown preset 'demo'"):
        paper.apply_model(sft.get_config("demo"), "demo")


def test_task_specific_continues_grpo_on_one_benchmark():
    from configs import grpo
    from facialr1_jax.train import grpo_loop

    config = grpo.get_config("task_specific")
    assert config.model.preset == "qwen2_5_vl_7b" and config.grpo.num_epochs == 10.0
    assert config.grpo.loss_variant == "standard" and config.grpo.init_from == ""
    # Named as it is meant to run: the general GRPO model to continue and one benchmark's files. The SFT
    # warm start never runs then, so its empty data paths are not an error.
    config.grpo.init_from = "workdirs/grpo"
    config.data.train_jsonl, config.data.eval_jsonl, config.data.image_root = "rafdb_train.jsonl", "rafdb_test.jsonl", "RAF-DB"
    config_validation.validate(config)
    # 10 passes over 12,271 records at 16 prompts a step, rounded up.
    assert grpo_loop.rollout_batches(config, 12271) == 7670
    config.grpo.init_from = ""
    with pytest.raises(config_validation.ConfigError, match="config.warm_start.data.source = 'jsonl' needs"):
        config_validation.validate(config)


def test_grpo_epochs_override_the_step_count():
    from configs import grpo
    from facialr1_jax.train import grpo_loop

    config = grpo.get_config("demo")
    config.grpo.num_steps, config.grpo.prompts_per_step = 1000, 16
    assert grpo_loop.rollout_batches(config, 5000) == 1000  # num_epochs = 0: grpo.num_steps
    config.grpo.num_epochs = 1.0
    assert grpo_loop.rollout_batches(config, 5000) == 313  # ceil(5000 / 16)
    config.grpo.num_epochs = -1.0
    with pytest.raises(config_validation.ConfigError, match="grpo.num_epochs = -1.0 must be >= 0"):
        config_validation.validate(config)


def test_pipeline_paper_variant_retrains_whole_epochs_and_runs_grpo_as_stage_2(tmp_path):
    from configs import pipeline
    from facialr1_jax.synth import pipeline as pipeline_lib

    config = pipeline.get_config("paper")
    assert config.model.preset == "qwen2_5_vl_7b"
    assert config.pipeline.sft_epochs_per_round == config.warm_start.sft.num_epochs == 2.0
    assert config.pipeline.grpo_steps_per_round == -1 and config.grpo.num_epochs == 1.0
    assert config.pipeline.sft_lr == 0.0
    files = pipeline_lib.DataFiles(seed="seed.jsonl", test="test.jsonl", image_root="images")
    later = pipeline_lib.sft_config(config, 2, previous_model="round-1/grpo", files=files, train_file="train.jsonl")
    assert (later.sft.num_epochs, later.sft.num_steps) == (2.0, 0)  # whole epochs, not 200 steps
    assert later.optimizer.lr == 5e-6 and later.model.checkpoint == "round-1/grpo"
    assert later.data.train_jsonl == "train.jsonl"
    for round_number in (1, 2, 3):
        grpo_round = pipeline_lib.grpo_config(config, round_number, "sft")
        assert (grpo_round.grpo.num_epochs, grpo_round.grpo.num_steps) == (1.0, config.grpo.num_steps)
        assert grpo_round.grpo.top_k == 50
    # The demo keeps its short fine-tunes.
    demo = pipeline.get_config("demo")
    assert demo.pipeline.sft_epochs_per_round == 0.0 and demo.pipeline.grpo_steps_per_round == 50
    later = pipeline_lib.sft_config(demo, 2, previous_model="m", files=files, train_file="t.jsonl")
    assert (later.sft.num_epochs, later.sft.num_steps) == (0.0, 200)
    assert pipeline_lib.grpo_config(demo, 2, "sft").grpo.num_steps == 50


def test_pipeline_paper_variant_evaluates_the_paper_benchmarks(tmp_path):
    from configs import eval as eval_config
    from configs import pipeline
    from facialr1_jax.eval.plan import EvalConfigError
    from facialr1_jax.synth import pipeline as pipeline_lib

    config = pipeline.get_config("paper")
    assert config.eval.normalize_emotions is False and config.eval.max_new_tokens == 1024
    assert set(config.benchmarks) == set(eval_config.PAPER_BENCHMARKS)
    assert pipeline_lib.benchmark_specs(config) == []  # none filled in: the test split only
    assert pipeline_lib.benchmark_specs(pipeline.get_config("demo")) == []
    rafdb = tmp_path / "rafdb.jsonl"
    rafdb.write_text("")
    (tmp_path / "RAF-DB").mkdir()
    config.benchmarks.rafdb.jsonl, config.benchmarks.rafdb.image_root = str(rafdb), str(tmp_path / "RAF-DB")
    specs = pipeline_lib.benchmark_specs(config)
    assert [(s.name, s.profile) for s in specs] == [("rafdb", "RAF-DB")]
    config.benchmarks.disfa.jsonl = str(tmp_path / "missing.jsonl")
    with pytest.raises(EvalConfigError, match="config.benchmarks.disfa.jsonl"):
        pipeline_lib.benchmark_specs(config)


def test_pipeline_round_knobs_are_checked():
    from configs import pipeline
    from facialr1_jax.synth import pipeline as pipeline_lib

    for key, value, message in [("grpo_steps_per_round", -2, "must be >= 0, or -1"),
                                ("sft_epochs_per_round", -1.0, "must be >= 0")]:
        config = pipeline.get_config("demo")
        config.pipeline[key] = value
        with pytest.raises(config_validation.ConfigError, match=rf"config.pipeline.{key} = .* {message}"):
            pipeline_lib.check_config(config)
