"""Padding encoded examples into batches of a few static shapes.

Two layouts:
  * training batches (`SFTCollator`): right-padded token rows split into micro-batches, in the
    layout `facialr1_jax.train.forward` documents (every leaf has a leading micro-batch axis);
  * prompt batches (`collate_prompts`): left-padded prompts for generation, so that every row's
    next token lands in the same column.

Static shapes: sequence lengths are padded to `length_bucket` (four sizes per power of two, at
least `MIN_LENGTH_BUCKET`, capped at the configured maximum), image patches to `patch_bucket` (the
next power of two). A run therefore compiles its step for a handful of shapes, not one per batch.

Everything here is numpy on the host, picklable, and runs inside grain worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np

from facialr1_jax.models import Qwen2_5_VLConfig, multimodal_position_ids, vision_plan

if TYPE_CHECKING:  # only for annotations: batching works on any objects with these fields
    from facialr1_jax.data.examples import PromptExample, TrainExample

MIN_LENGTH_BUCKET = 32


def length_bucket(length: int, max_length: int, minimum: int = MIN_LENGTH_BUCKET, per_octave: int = 4) -> int:
    """The padded length for a batch whose longest row has `length` tokens.

    Buckets are `per_octave` evenly spaced sizes per power of two (4: ..., 256, 320, 384, 448, 512,
    640, ...), at least `minimum`, and never above `max_length` rounded up to a multiple of 8. Plain
    powers of two would pad a 280-token batch to 512 (45% wasted compute); these waste at most 20%
    while a whole run still sees only a handful of shapes.
    """
    if length > max_length:
        raise ValueError(f"a row of {length} tokens exceeds the maximum sequence length {max_length}")
    cap = -(-max_length // 8) * 8
    length = max(length, minimum, 1)
    octave = 1 << int(np.floor(np.log2(length)))
    step = max(octave // per_octave, 1)
    bucket = -(-length // step) * step
    return min(bucket, cap)


def patch_bucket(num_patches: int, merge_unit: int) -> int:
    """The padded patch count for a micro-batch's images: next power of two, a multiple of merge_unit."""
    bucket = 1 << max(0, int(np.ceil(np.log2(max(num_patches, 1)))))
    return -(-max(bucket, merge_unit) // merge_unit) * merge_unit


def pack_vision(
    pixel_values: Sequence[np.ndarray], grids: Sequence[np.ndarray], config: Qwen2_5_VLConfig, pad_to: int
) -> dict[str, np.ndarray]:
    """Concatenated patches of some images padded to `pad_to` rows, with their vision plan."""
    vision = config.vision_config
    grid = np.concatenate([np.asarray(g, np.int64).reshape(-1, 3) for g in grids])
    patches = np.concatenate(pixel_values).astype(np.float32, copy=False)
    if patches.shape[1] != vision.patch_dim:
        raise ValueError(f"pixel_values rows have {patches.shape[1]} values; the model expects {vision.patch_dim}")
    padded = np.zeros((pad_to, vision.patch_dim), np.float32)
    padded[: patches.shape[0]] = patches
    plan = vision_plan(grid, vision, pad_to=pad_to)
    out = {"pixel_values": padded}
    out.update({field.name: np.asarray(getattr(plan, field.name)) for field in dataclasses.fields(plan)})
    return out


@dataclasses.dataclass(frozen=True)
class SFTCollator:
    """Builds one optimiser batch from `num_micro_batches * micro_batch_size` TrainExamples.

    Returns a dict of numpy arrays in the micro-batched layout of `train.forward` (full-length
    targets/loss_mask and the compact target_positions/target_ids/target_mask) plus `"info"`,
    host-side facts that never go to the device: record ids per micro-batch, real-token and
    target-token counts, the number of truncated targets.
    """

    model_config: Qwen2_5_VLConfig
    num_micro_batches: int
    max_length: int
    pad_id: int

    def __call__(self, examples: Sequence[TrainExample]) -> dict:
        examples = list(examples)
        if len(examples) % self.num_micro_batches:
            raise ValueError(
                f"a batch of {len(examples)} examples does not split into {self.num_micro_batches} micro-batches"
            )
        per_micro = len(examples) // self.num_micro_batches
        length = length_bucket(max(len(e.input_ids) for e in examples), self.max_length)
        merge_unit = self.model_config.vision_config.merge_unit
        micro_groups = [examples[i * per_micro : (i + 1) * per_micro] for i in range(self.num_micro_batches)]
        has_images = [any(e.num_patches for e in group) for group in micro_groups]
        if any(has_images) and not all(has_images):
            raise ValueError("some micro-batches have images and some have none; mix them or batch them apart")
        patches = max(sum(e.num_patches for e in group) for group in micro_groups)
        pad_patches = patch_bucket(patches, merge_unit) if patches else 0

        columns: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "position_ids", "targets",
                                                     "loss_mask", "target_positions", "target_ids",
                                                     "target_mask")}
        # The trained positions of every row, gathered into a short bucketed axis: the loss needs the
        # vocabulary projection only there (the reply, not the prompt), which is most of its cost.
        most_targets = max(int(e.label_mask[1:].sum()) for e in examples)
        num_targets = length_bucket(max(most_targets, 1), length, minimum=8)
        vision_parts: list[dict] = []
        for group in micro_groups:
            ids = np.full((per_micro, length), self.pad_id, np.int32)
            mask = np.zeros((per_micro, length), bool)
            label = np.zeros((per_micro, length), np.float32)
            for row, example in enumerate(group):
                n = len(example.input_ids)
                ids[row, :n] = example.input_ids
                mask[row, :n] = True
                label[row, :n] = example.label_mask
            targets = np.zeros_like(ids)
            targets[:, :-1] = ids[:, 1:]
            loss_mask = np.zeros_like(label)
            loss_mask[:, :-1] = label[:, 1:]  # position t predicts token t + 1
            positions = np.zeros((per_micro, num_targets), np.int32)
            selected = np.zeros((per_micro, num_targets), np.int32)
            selected_mask = np.zeros((per_micro, num_targets), np.float32)
            for row in range(per_micro):
                trained = np.flatnonzero(loss_mask[row])
                positions[row, : trained.size] = trained
                selected[row, : trained.size] = targets[row, trained]
                selected_mask[row, : trained.size] = loss_mask[row, trained]
            images = [e for e in group if e.num_patches]
            grids = [e.image_grid_thw for e in images]
            position_ids, _ = multimodal_position_ids(
                ids, np.concatenate(grids) if grids else None, mask, self.model_config
            )
            columns["input_ids"].append(ids)
            columns["attention_mask"].append(mask)
            columns["position_ids"].append(np.transpose(position_ids, (1, 0, 2)))
            columns["targets"].append(targets)
            columns["loss_mask"].append(loss_mask)
            columns["target_positions"].append(positions)
            columns["target_ids"].append(selected)
            columns["target_mask"].append(selected_mask)
            if pad_patches:
                vision_parts.append(
                    pack_vision([e.pixel_values for e in images], grids, self.model_config, pad_patches)
                )
        batch = {name: np.stack(values) for name, values in columns.items()}
        if vision_parts:
            batch["vision"] = {name: np.stack([part[name] for part in vision_parts]) for name in vision_parts[0]}
        batch["info"] = {
            "ids": [[e.id for e in group] for group in micro_groups],
            "tokens": int(sum(len(e.input_ids) for e in examples)),
            "target_tokens": int(sum(float(e.label_mask[1:].sum()) for e in examples)),
            "truncated": int(sum(e.truncated for e in examples)),
        }
        return batch


def split_info(batch: dict) -> tuple[dict, dict]:
    """(arrays for the device, host info) of a collated batch."""
    arrays = {k: v for k, v in batch.items() if k != "info"}
    return arrays, batch.get("info", {})


def collate_prompts(
    examples: Sequence[PromptExample],
    model_config: Qwen2_5_VLConfig,
    *,
    pad_id: int,
    max_length: int,
    batch_size: int | None = None,
) -> dict:
    """Left-padded prompt batch for generation.

    Returns numpy arrays: input_ids [B, L], attention_mask [B, L], position_ids [3, B, L],
    rope_deltas [B] (a token generated after a prompt of n real tokens sits at n + rope_deltas),
    prompt_lengths [B], `vision` (packed patches + plan, as in training batches, absent without
    images), and `ids`. With `batch_size`, the batch is padded with copies of the last prompt to
    that many rows (`num_real` says how many are real), so the last, short batch of an evaluation
    has the same shape as the others.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("collate_prompts needs at least one prompt")
    num_real = len(examples)
    if batch_size is not None:
        if num_real > batch_size:
            raise ValueError(f"{num_real} prompts do not fit a batch of {batch_size}")
        examples = examples + [examples[-1]] * (batch_size - num_real)
    length = length_bucket(max(len(e.input_ids) for e in examples), max_length)
    ids = np.full((len(examples), length), pad_id, np.int32)
    mask = np.zeros((len(examples), length), bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, length - n :] = example.input_ids
        mask[row, length - n :] = True
    images = [e for e in examples if e.num_patches]
    grids = [e.image_grid_thw for e in images]
    position_ids, rope_deltas = multimodal_position_ids(
        ids, np.concatenate(grids) if grids else None, mask, model_config
    )
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "rope_deltas": rope_deltas,
        "prompt_lengths": mask.sum(axis=1).astype(np.int32),
        "ids": [e.id for e in examples],
        "num_real": num_real,
    }
    if images:
        total = sum(e.num_patches for e in images)
        out["vision"] = pack_vision(
            [e.pixel_values for e in images], grids, model_config,
            patch_bucket(total, model_config.vision_config.merge_unit),
        )
    return out
