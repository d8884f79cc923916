"""Checks a run's ConfigDict before anything is built or compiled.

Unknown keys are already rejected by the locked ConfigDict when flags are parsed; this module
catches values of the right type but the wrong meaning (a negative learning rate, a misspelt mode),
so a mistake costs seconds, not a compile. Only sections present in the config are checked: each
stage config carries the sections it uses.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable

import ml_collections


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


STAGES = ("pretrain", "sft", "grpo", "synth", "pipeline", "eval")

# Keys whose value must be one of a few strings.
CHOICES: dict[str, tuple[str, ...]] = {
    "stage": STAGES,
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "data.source": ("builtin", "jsonl", "tfds"),
    "data.on_error": ("raise", "skip"),
    "data.prompt_variant": ("full", "compact"),
    "data.target": ("description", "compact"),
    "optimizer.schedule": ("linear", "cosine", "constant"),
    "sft.loss_on": ("assistant", "all"),
    "grpo.kl_estimator": ("k1", "k3"),
    "grpo.aggregation": ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"),
    "grpo.advantage": ("group", "mean_only", "batch"),
    "grpo.ratio_level": ("token", "sequence"),
    "grpo.loss_variant": ("standard", "facial_r1_code"),
    "rewards.accuracy_mode": ("normalized", "exact"),
    "rewards.au_mode": ("2f1-1", "f1"),
    "synth.check_aus": ("exact", "f1", "off"),
}


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _mesh_axis(v: Any) -> bool:
    return v == -1 or v >= 1


def _probability(v: Any) -> bool:
    return 0.0 <= v <= 1.0


def _unit_open(v: Any) -> bool:
    return 0.0 < v <= 1.0


# Numeric keys and the predicate each must satisfy, with the wording used in the error.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (_positive, "> 0"),
    "optimizer.warmup_steps": (_non_negative, ">= 0"),
    "optimizer.end_lr_fraction": (_probability, "in [0, 1]"),
    "optimizer.b1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optimizer.b2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optimizer.eps": (_positive, "> 0"),
    "optimizer.weight_decay": (_non_negative, ">= 0"),
    "optimizer.grad_clip": (_non_negative, ">= 0 (0 = off)"),
    "optimizer.vision_lr_scale": (_non_negative, ">= 0 (0 = vision tower frozen)"),
    "mesh.data": (_mesh_axis, "-1 or >= 1"),
    "mesh.fsdp": (_mesh_axis, "-1 or >= 1"),
    "mesh.tensor": (_mesh_axis, "-1 or >= 1"),
    "data.builtin_num_sft": (_positive, "> 0"),
    "data.builtin_num_rl": (_positive, "> 0"),
    "data.builtin_num_test": (_positive, "> 0"),
    "data.builtin_image_size": (lambda v: v >= 28, ">= 28"),
    "data.min_pixels": (_positive, "> 0"),
    "data.max_pixels": (_positive, "> 0"),
    "data.max_prompt_tokens": (_positive, "> 0"),
    "data.max_target_tokens": (_positive, "> 0"),
    "data.num_workers": (_non_negative, ">= 0"),
    "checkpoint.every_steps": (_positive, "> 0"),
    "checkpoint.max_to_keep": (_positive, "> 0"),
    "logging.every_steps": (_positive, "> 0"),
    "sft.num_epochs": (_non_negative, ">= 0"),
    "sft.num_steps": (_non_negative, ">= 0"),
    "sft.batch_size": (_positive, "> 0"),
    "sft.micro_batch_size": (_non_negative, ">= 0 (0 = batch_size)"),
    "sft.eval_every_steps": (_non_negative, ">= 0"),
    "sft.eval_num_examples": (_non_negative, ">= 0"),
    "sft.eval_max_new_tokens": (_positive, "> 0"),
    "sft.final_eval_num_examples": (_non_negative, ">= 0 (0 = the whole test split)"),
    "sft.eval_batch_size": (_positive, "> 0"),
    "sft.synthesis_prompt_share": (_probability, "in [0, 1]"),
    "pretrain.num_train_faces": (_positive, "> 0"),
    "pretrain.num_eval_faces": (_positive, "> 0"),
    "pretrain.corpus_seed": (_non_negative, ">= 0"),
    "pretrain.num_steps": (_positive, "> 0"),
    "pretrain.batch_size": (_positive, "> 0"),
    "pretrain.vision_warmup_steps": (_non_negative, ">= 0 (0 = off)"),
    "pretrain.vision_warmup_batch_size": (_positive, "> 0"),
    "pretrain.vision_warmup_lr": (_positive, "> 0"),
    "pretrain.eval_every_steps": (_non_negative, ">= 0 (0 = only at the end)"),
    "pretrain.eval_num_faces": (_non_negative, ">= 0 (0 = all)"),
    "pretrain.final_eval_num_faces": (_non_negative, ">= 0 (0 = all)"),
    "pretrain.eval_batch_size": (_positive, "> 0"),
    "pretrain.eval_max_new_tokens": (_positive, "> 0"),
    "grpo.num_steps": (_non_negative, ">= 0"),
    "grpo.num_epochs": (_non_negative, ">= 0 (0 = grpo.num_steps)"),
    "grpo.prompts_per_step": (_positive, "> 0"),
    "grpo.num_generations": (lambda v: v >= 2, ">= 2 (advantages are relative to the group)"),
    "grpo.micro_batch_size": (_non_negative, ">= 0 (0 = all at once)"),
    "grpo.max_new_tokens": (_positive, "> 0"),
    "grpo.temperature": (_positive, "> 0"),
    "grpo.top_k": (_non_negative, ">= 0 (0 = off)"),
    "grpo.top_p": (_unit_open, "in (0, 1]"),
    "grpo.mu": (_positive, ">= 1"),
    "grpo.eps_low": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "grpo.eps_high": (_non_negative, ">= 0"),
    "grpo.beta": (_non_negative, ">= 0 (0 = no reference model)"),
    "grpo.advantage_eps": (_non_negative, ">= 0"),
    "grpo.eval_num_examples": (_non_negative, ">= 0 (0 = all)"),
    "grpo.eval_batch_size": (_positive, "> 0"),
    "grpo.log_samples": (_non_negative, ">= 0"),
    "grpo.eval_every_steps": (_non_negative, ">= 0"),
    "rewards.clamp": (_positive, "> 0"),
    "rewards.length_target": (_non_negative, ">= 0"),
    "synth.max_attempts": (_positive, ">= 1"),
    "synth.num_candidates": (_positive, ">= 1"),
    "synth.batch_size": (_positive, "> 0"),
    "synth.max_new_tokens": (_positive, "> 0"),
    "synth.temperature": (_positive, "> 0"),
    "synth.au_f1_threshold": (_probability, "in [0, 1]"),
    "synth.shard_size": (_positive, "> 0"),
    "eval.batch_size": (_positive, "> 0"),
    "eval.max_new_tokens": (_positive, "> 0"),
    "pipeline.rounds": (_positive, ">= 1"),
}


# Stages that only run the model (no optimiser): parameters may be stored in bfloat16 there.
INFERENCE_STAGES = ("synth", "eval")


def _check_bfloat16_params(config: ml_collections.ConfigDict, prefix: str) -> None:
    """Training on bfloat16 parameters (AdamW applied to the bfloat16 copy, no float32 master weights)
    loses every update below bfloat16's spacing near a weight, which at fine-tuning learning rates is
    nearly all of them; it is an error unless optimizer.allow_bfloat16_params opts in by name."""
    present, storage = _lookup(config, "model.param_dtype")
    if not present or storage != "bfloat16" or config.get("stage") in INFERENCE_STAGES or "optimizer" not in config:
        return
    if not config.optimizer.get("allow_bfloat16_params", False):
        raise ConfigError(
            f"config.{prefix}model.param_dtype = 'bfloat16' trains without float32 master weights: AdamW "
            f"updates below bfloat16's spacing round away. Set config.{prefix}model.param_dtype = 'float32' "
            f"(float32 parameters and optimiser state, with config.{prefix}model.dtype = 'bfloat16' for "
            f"bfloat16 compute), or opt in with config.{prefix}optimizer.allow_bfloat16_params = True")


def _check_loss_variant(config: ml_collections.ConfigDict, prefix: str) -> None:
    """grpo.loss_variant = "facial_r1_code" is the authors' objective as it stands: token ratios, each
    reward function's loss a mean over its completions' tokens, the AU advantage not split; the knobs
    that would make it something else are errors naming them."""
    present, variant = _lookup(config, "grpo.loss_variant")
    if not present or variant != "facial_r1_code":
        return
    g = config.grpo
    conflicts = []
    if g.get("ratio_level", "token") != "token":
        conflicts.append(f"config.{prefix}grpo.ratio_level = {g.ratio_level!r} (needs 'token')")
    if g.get("aggregation", "seq_mean_token_mean") != "seq_mean_token_mean":
        conflicts.append(f"config.{prefix}grpo.aggregation = {g.aggregation!r} (needs 'seq_mean_token_mean')")
    if g.get("au_think_only", False):
        conflicts.append(f"config.{prefix}grpo.au_think_only = True (needs False: the variant applies the AU "
                         "term to think tokens itself)")
    if "rewards" in config and not any(float(v) != 0.0 for k, v in config.rewards.items() if k.endswith("_weight")):
        conflicts.append(f"every config.{prefix}rewards.*_weight = 0 (the loss averages over the reward functions "
                         "with a non-zero weight)")
    if conflicts:
        raise ConfigError(f"config.{prefix}grpo.loss_variant = 'facial_r1_code' (the authors' objective) conflicts "
                          f"with {'; '.join(conflicts)}; change those keys or use grpo.loss_variant = 'standard'")


def _warm_start_unused(config: ml_collections.ConfigDict) -> bool:
    """A GRPO run that names its starting model (grpo.init_from or model.checkpoint) never trains the
    nested warm_start SFT config (train/grpo_loop.resolve_initial_checkpoint), so it is not checked."""
    if config.get("stage") != "grpo":
        return False
    return bool(config.get("grpo", {}).get("init_from") or config.get("model", {}).get("checkpoint"))


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raises ConfigError naming the first invalid key; returns None when the config is usable.

    Nested stage configs (GRPO's `warm_start`, the SFT run it trains first) are checked too.
    """
    if "warm_start" in config and not _warm_start_unused(config):
        validate(config.warm_start, prefix=f"{prefix}warm_start.")
    for key, allowed in CHOICES.items():
        present, value = _lookup(config, key)
        if present and value not in allowed:
            raise ConfigError(f"config.{prefix}{key} = {value!r} is not one of {', '.join(allowed)}")
    for key, (predicate, wording) in RULES.items():
        present, value = _lookup(config, key)
        if not present:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config.{prefix}{key} = {value!r} must be a number {wording}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{prefix}{key} = {value!r} must be finite")
        if not predicate(value):
            raise ConfigError(f"config.{prefix}{key} = {value!r} must be {wording}")
    _check_bfloat16_params(config, prefix)
    present, min_pixels = _lookup(config, "data.min_pixels")
    if present and min_pixels > config.data.max_pixels:
        raise ConfigError(
            f"config.{prefix}data.min_pixels = {min_pixels} exceeds config.{prefix}data.max_pixels = {config.data.max_pixels}"
        )
    present, overrides = _lookup(config, "model.preset_overrides")
    if present and overrides:
        try:
            parsed = json.loads(overrides)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config.model.preset_overrides is not valid JSON: {error}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"config.model.preset_overrides must be a JSON object, got {overrides!r}")
        if config.model.get("checkpoint"):
            raise ConfigError(
                f"config.{prefix}model.preset_overrides shapes a fresh model, but config.{prefix}model.checkpoint = "
                f"{config.model.checkpoint!r} loads one; set config.{prefix}model.checkpoint = '' to train from scratch")
    _check_loss_variant(config, prefix)
    present, micro = _lookup(config, "sft.micro_batch_size")
    if present and micro and config.sft.batch_size % micro:
        raise ConfigError(
            f"config.sft.batch_size = {config.sft.batch_size} is not a multiple of "
            f"config.sft.micro_batch_size = {micro}"
        )
    if "data" in config and config.data.source == "jsonl" and config.stage in ("sft", "grpo", "pipeline"):
        if not config.data.train_jsonl:
            raise ConfigError(f"config.{prefix}data.source = 'jsonl' needs config.{prefix}data.train_jsonl (an FEA JSONL file)")
        if not config.data.image_root:
            raise ConfigError(
                f"config.{prefix}data.source = 'jsonl' needs config.{prefix}data.image_root (the folder images live in)"
            )


def _batch_split(mesh_shape: dict) -> int:
    split = 1
    for axis in ("data", "fsdp"):
        split *= int(mesh_shape.get(axis, 1))
    return split


def micro_batch_rows(config: ml_collections.ConfigDict) -> tuple[str, int] | None:
    """(the config key that sets the rows of one micro-batch, those rows) for an SFT or GRPO config."""
    if config.get("stage") == "sft" and "sft" in config:
        return "sft.micro_batch_size", int(config.sft.micro_batch_size) or int(config.sft.batch_size)
    if config.get("stage") == "grpo" and "grpo" in config:
        g = config.grpo
        return "grpo.micro_batch_size", int(g.micro_batch_size) or int(g.prompts_per_step) * int(g.num_generations)
    return None


def check_batch_split(config: ml_collections.ConfigDict, mesh_shape: dict, prefix: str = "") -> None:
    """Raises ConfigError when a train micro-batch does not split over the mesh's `data x fsdp` devices
    while parameters are sharded over `fsdp`.

    The train step splits each micro-batch's rows over the batch axes; rows that do not divide evenly
    leave the batch replicated, so every device computes every row. Under FSDP that is the
    7B-on-8-devices failure mode (a micro-batch of 4 on 8 devices: 167 GiB per device in the plan
    instead of a fraction of it), so it is an error naming the knob. Pure data parallelism with a
    small batch (demo runs on many fake devices) only costs time: a warning.
    `mesh_shape` is the built mesh's {axis: size} (after -1 was resolved).
    """
    found = micro_batch_rows(config)
    if found is None:
        return
    key, rows = found
    split = _batch_split(mesh_shape)
    if int(mesh_shape.get("fsdp", 1)) > 1 and rows % split:
        set_to = int(config[key.split(".")[0]].micro_batch_size)
        meaning = "" if set_to else (" (0: sft.batch_size rows at once)" if key.startswith("sft") else
                                     " (0: all prompts_per_step x num_generations rows at once)")
        raise ConfigError(
            f"config.{prefix}{key} = {set_to}{meaning}: {rows} rows per micro-batch do not split over the mesh's "
            f"data x fsdp = {split} devices ({dict(mesh_shape)}): every device would compute every row. "
            f"Set config.{prefix}{key} to a multiple of {split}")
    if rows % split:
        logging.getLogger(__name__).warning(
            "config.%s%s: %d rows per micro-batch do not split over the %d data-parallel devices; every "
            "device computes every row (set a multiple of %d to spread them)", prefix, key, rows, split, split)
