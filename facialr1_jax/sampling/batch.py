"""The engine's input: a left-padded prompt batch with its packed images (`PromptBatch`).

Prompts are encoded by `facialr1_jax.data.examples.encode_prompt_example` and padded by
`facialr1_jax.data.batching.collate_prompts` (which also rounds the prompt length and the image patch
count up to buckets); `PromptBatch.from_collated` takes that dict as it is. `PromptBatch.from_prompts`
builds the same thing from plain (token ids, pixel_values, image_grid_thw) triples through the same
collator, for callers without FEA records (tests, benchmarks, ad-hoc prompts).

Left padding puts every row's last prompt token in the last column, so the first generated token of
every row is predicted from the same column and decoded tokens of all rows share cache slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from flax import struct

from facialr1_jax.models import Qwen2_5_VLConfig, VisionPlan

_PLAN_FIELDS = tuple(field.name for field in dataclasses.fields(VisionPlan))


@struct.dataclass
class PromptBatch:
    """B left-padded prompts (numpy on the host, arrays inside the engine's programs).

    input_ids      int32 (B, P)     prompt tokens, image placeholders included, padding on the left
    attention_mask bool  (B, P)     real tokens
    position_ids   int32 (3, B, P)  M-RoPE positions (`models.multimodal_position_ids`)
    rope_deltas    int32 (B,)       a token after n real prompt tokens sits at n + rope_deltas
    pixel_values   f32   (N, patch_dim) or None   patches of all images, processor order, zero-padded
    plan           VisionPlan or None             `models.vision_plan(grids, pad_to=N)` of those images
    """

    input_ids: Any
    attention_mask: Any
    position_ids: Any
    rope_deltas: Any
    pixel_values: Any = None
    plan: Any = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def prompt_length(self) -> int:
        return int(self.input_ids.shape[1])

    @classmethod
    def from_collated(cls, collated: Mapping[str, Any]) -> "PromptBatch":
        """From the dict of `data.batching.collate_prompts` (extra keys such as ids are ignored)."""
        missing = [key for key in ("input_ids", "attention_mask", "position_ids", "rope_deltas") if key not in collated]
        if missing:
            raise KeyError(f"prompt batch dict lacks {missing}; build it with data.batching.collate_prompts")
        vision = collated.get("vision")
        pixel_values = plan = None
        if vision:
            absent = [name for name in ("pixel_values",) + _PLAN_FIELDS if name not in vision]
            if absent:
                raise KeyError(f"prompt batch 'vision' lacks {absent}")
            pixel_values = np.asarray(vision["pixel_values"], np.float32)
            plan = VisionPlan(**{name: np.asarray(vision[name], np.int32) for name in _PLAN_FIELDS})
        return cls(input_ids=np.asarray(collated["input_ids"], np.int32),
                   attention_mask=np.asarray(collated["attention_mask"]).astype(bool),
                   position_ids=np.asarray(collated["position_ids"], np.int32),
                   rope_deltas=np.asarray(collated["rope_deltas"], np.int32),
                   pixel_values=pixel_values, plan=plan)

    @classmethod
    def from_prompts(cls, prompts: Sequence[tuple[Any, Any, Any]], config: Qwen2_5_VLConfig, *, pad_id: int,
                     max_length: int) -> "PromptBatch":
        """From (input_ids, pixel_values, image_grid_thw) per prompt, via `collate_prompts`.

        pixel_values / image_grid_thw may be None for a text-only prompt. max_length caps the prompt
        length bucket (as `data.max_prompt_tokens` does).
        """
        from facialr1_jax.data.batching import collate_prompts

        patch_dim = config.vision_config.patch_dim
        encoded = []
        for index, (ids, pixel_values, grid) in enumerate(prompts):
            if pixel_values is None:
                pixel_values, grid = np.zeros((0, patch_dim), np.float32), np.zeros((0, 3), np.int64)
            encoded.append(_EncodedPrompt(id=str(index), input_ids=np.asarray(ids, np.int32),
                                          pixel_values=np.asarray(pixel_values, np.float32),
                                          image_grid_thw=np.asarray(grid, np.int64).reshape(-1, 3)))
        return cls.from_collated(collate_prompts(encoded, config, pad_id=pad_id, max_length=max_length))

    def validate(self, config: Qwen2_5_VLConfig) -> None:
        """Clear errors for batches the engine cannot serve (wrong shapes, right padding, missing images)."""
        ids = np.asarray(self.input_ids)
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"prompt batch input_ids must be (batch, length) and non-empty, got {ids.shape}")
        batch, length = ids.shape
        mask = np.asarray(self.attention_mask)
        expected = {"attention_mask": (mask.shape, (batch, length)),
                    "position_ids": (np.shape(self.position_ids), (3, batch, length)),
                    "rope_deltas": (np.shape(self.rope_deltas), (batch,))}
        for name, (got, want) in expected.items():
            if tuple(got) != want:
                raise ValueError(f"prompt batch {name} has shape {tuple(got)}, expected {want}")
        mask = mask.astype(bool)
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(f"prompt batch rows {empty.tolist()} have no real token")
        not_left_padded = np.flatnonzero(~mask[:, -1] | (np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))
        if not_left_padded.size:
            raise ValueError(f"prompt batch rows {not_left_padded.tolist()} are not left-padded (every row's real "
                             f"tokens must be contiguous and end in the last column)")
        placeholders = int(np.sum((ids == config.image_token_id) & mask))
        if self.pixel_values is None:
            if placeholders:
                raise ValueError(f"prompt batch holds {placeholders} image placeholder tokens but no pixel_values")
            return
        if self.plan is None:
            raise ValueError("prompt batch has pixel_values but no vision plan")
        vision = config.vision_config
        shape = np.shape(self.pixel_values)
        if len(shape) != 2 or shape[1] != vision.patch_dim or shape[0] != int(np.shape(self.plan.patch_order)[0]):
            raise ValueError(f"prompt batch pixel_values has shape {shape}; its plan expects "
                             f"({int(np.shape(self.plan.patch_order)[0])}, {vision.patch_dim})")
        real_features = int(np.sum(np.asarray(self.plan.window_segment_ids) >= 0)) // vision.merge_unit
        if placeholders != real_features:
            raise ValueError(f"prompt batch holds {placeholders} image placeholder tokens but its images give "
                             f"{real_features} features")

    def with_rows(self, rows: int, filler_id: int) -> "PromptBatch":
        """The batch grown to `rows` by appending filler rows (one `filler_id` token each, no image;
        filler_id must not be the image placeholder).

        Filler rows keep the compiled shapes on a few batch-size buckets; their outputs are dropped.
        """
        batch, length = self.batch_size, self.prompt_length
        if rows == batch:
            return self
        if rows < batch:
            raise ValueError(f"cannot shrink a prompt batch of {batch} rows to {rows}")
        extra = rows - batch
        # A single real token in the last column keeps the row left-padded and its attention non-empty.
        filler_mask = np.zeros((extra, length), bool)
        filler_mask[:, -1] = True
        return self.replace(
            input_ids=np.concatenate([np.asarray(self.input_ids, np.int32),
                                      np.full((extra, length), filler_id, np.int32)]),
            attention_mask=np.concatenate([np.asarray(self.attention_mask, bool), filler_mask]),
            position_ids=np.concatenate([np.asarray(self.position_ids, np.int32),
                                         np.zeros((3, extra, length), np.int32)], axis=1),
            rope_deltas=np.concatenate([np.asarray(self.rope_deltas, np.int32), np.zeros((extra,), np.int32)]),
        )


@dataclasses.dataclass(frozen=True)
class _EncodedPrompt:
    """The fields `collate_prompts` reads from a `data.examples.PromptExample`."""

    id: str
    input_ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])
