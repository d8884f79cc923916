"""The model call on one micro-batch dict, shared by the SFT and GRPO losses.

A micro-batch (built by `facialr1_jax.data.batching`) holds, per example (axis 0 = example):
    input_ids      int32 [B, L]     prompt + completion tokens, right-padded
    attention_mask bool  [B, L]     real tokens
    position_ids   int32 [B, 3, L]  M-RoPE (temporal, height, width) positions, host-computed
    targets        int32 [B, L]     targets[t] = input_ids[t + 1] (0 where there is none)
    loss_mask      f32   [B, L]     1 where targets[t] is trained on
optionally the same targets gathered to the trained positions only (T = a bucket of the most
trained tokens in a row; SFT batches carry them, `selected_target_log_probs` uses them):
    target_positions int32 [B, T]   column of each trained target (0 where unused)
    target_ids       int32 [B, T]   targets at those columns
    target_mask      f32   [B, T]   1 for real entries
and under "vision", packed over all images of the micro-batch in processor order:
    pixel_values   f32   [P, patch_dim]   patches padded to a bucket P
    patch_order, window_segment_ids, image_segment_ids [P], rotary_positions [P, 2],
    merged_restore [P / merge_unit]       the host-computed `VisionPlan` of those images
    feature_offsets int32 [B]   optional: the merged feature row where each example's first image
                                placeholder reads (`Qwen2_5_VLModel.embed`), so examples can share one
                                packed image (GRPO packs each prompt's image once for its G samples);
                                absent = placeholders read the packed images in row-major order
A GRPO micro-batch in the shared-prompt layout (`train.grpo_batch`) holds its B prompts once and
the R = B * G completions that follow them, rows ordered [prompt0 x G, ...]:
    prompt_ids int32 [B, P], prompt_attention_mask bool [B, P], prompt_position_ids int32 [B, 3, P]
    completion_ids int32 [R, T], completion_mask f32 [R, T], completion_position_ids int32 [R, 3, T]
with "vision" packing the B prompts' images in prompt order (no feature_offsets: the placeholders
read them row-major).
Position ids travel example-major ([B, 3, L]) so that every per-example leaf splits on axis 0 over
the batch mesh axes; they are transposed to the model's (3, B, L) here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from facialr1_jax.models import VisionPlan

PLAN_FIELDS = tuple(field.name for field in dataclasses.fields(VisionPlan))
FEATURE_OFFSETS = "feature_offsets"  # per-example, under "vision" but not part of the VisionPlan
SHARED_PROMPT_IDS = "prompt_ids"  # marks a GRPO batch in the shared-prompt layout (train.grpo_batch)


def vision_inputs(micro_batch: dict) -> tuple[jax.Array | None, VisionPlan | None]:
    """(pixel_values, plan) of a micro-batch, or (None, None) for a text-only batch."""
    vision = micro_batch.get("vision")
    if not vision:
        return None, None
    plan = VisionPlan(**{name: vision[name] for name in PLAN_FIELDS})
    return vision["pixel_values"], plan


def hidden_states(model, micro_batch: dict) -> jax.Array:
    """Final decoder hidden states [B, L, hidden] for a micro-batch."""
    pixel_values, plan = vision_inputs(micro_batch)
    feature_offsets = (micro_batch.get("vision") or {}).get(FEATURE_OFFSETS)
    position_ids = jnp.moveaxis(micro_batch["position_ids"], 1, 0)
    hidden, _ = model.forward(
        micro_batch["input_ids"],
        position_ids,
        micro_batch["attention_mask"],
        pixel_values=pixel_values,
        plan=plan,
        return_hidden=True,
        feature_offsets=feature_offsets,
    )
    return hidden


def target_log_probs(model, micro_batch: dict, chunk_size: int = 128) -> jax.Array:
    """log p(targets[b, t]) in float32, [B, L]; the vocabulary projection runs in chunks of positions
    so that a full [B, L, vocab] logits tensor is never held (also not in the backward pass)."""
    hidden = hidden_states(model, micro_batch)
    return model.token_log_probs(hidden, micro_batch["targets"], chunk_size=chunk_size)


def completion_log_probs(model, micro_batch: dict, num_completion_tokens: int, chunk_size: int = 128) -> jax.Array:
    """log p of the last `num_completion_tokens` input tokens, [B, T] float32.

    For GRPO batches (left-padded prompt, then the completion): only the T positions that predict a
    completion token go through the vocabulary projection, not the prompt's, whose log-probs every
    caller would slice away. Same values as slicing `target_log_probs`. A batch in the shared-prompt
    layout (`prompt_ids` present) goes through `shared_prompt_completion_log_probs`.
    """
    if SHARED_PROMPT_IDS in micro_batch:
        log_probs = shared_prompt_completion_log_probs(model, micro_batch, chunk_size)
        if log_probs.shape[1] != num_completion_tokens:
            raise ValueError(f"the batch holds {log_probs.shape[1]} completion tokens per row, "
                             f"not {num_completion_tokens}")
        return log_probs
    hidden = hidden_states(model, micro_batch)
    length = micro_batch["input_ids"].shape[1]
    start = length - num_completion_tokens - 1  # the position before the first completion token
    predicting = hidden[:, start : length - 1]
    targets = micro_batch["targets"][:, start : length - 1]
    return model.token_log_probs(predicting, targets, chunk_size=chunk_size)


def shared_prompt_completion_log_probs(model, micro_batch: dict, chunk_size: int = 128) -> jax.Array:
    """log p of every completion token, [R, T] float32, for a micro-batch in the shared-prompt layout
    (`train.grpo_batch`): each prompt and its image go through the model once for its G completions.

    The first completion token is predicted at the prompt's last position (left padding: the last
    column), token j > 0 at completion position j - 1.
    """
    pixel_values, plan = vision_inputs(micro_batch)
    completion_ids = micro_batch["completion_ids"]
    prompt_hidden, completion_hidden = model.shared_prompt_hidden(
        micro_batch[SHARED_PROMPT_IDS], jnp.moveaxis(micro_batch["prompt_position_ids"], 1, 0),
        micro_batch["prompt_attention_mask"], completion_ids,
        jnp.moveaxis(micro_batch["completion_position_ids"], 1, 0), micro_batch["completion_mask"] > 0,
        pixel_values=pixel_values, plan=plan)
    samples = completion_ids.shape[0] // prompt_hidden.shape[0]
    first = jnp.repeat(prompt_hidden[:, -1:], samples, axis=0)
    predicting = jnp.concatenate([first, completion_hidden[:, :-1]], axis=1)
    return model.token_log_probs(predicting, completion_ids, chunk_size=chunk_size)


def selected_target_log_probs(model, micro_batch: dict, chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
    """(log p of the trained targets, their mask), each [B, T].

    With `target_positions` in the batch, the vocabulary projection runs only at those positions
    (for assistant-only SFT, the reply: a third of the sequence in the demo, half in the benchmark),
    which saves most of the LM head's cost, its largest single matmul. Without them, every position
    is projected and the full-length `loss_mask` is returned as the mask.
    """
    if "target_positions" not in micro_batch:
        return target_log_probs(model, micro_batch, chunk_size), micro_batch["loss_mask"]
    hidden = hidden_states(model, micro_batch)
    positions = micro_batch["target_positions"]
    selected = jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)
    log_probs = model.token_log_probs(selected, micro_batch["target_ids"], chunk_size=chunk_size)
    return log_probs, micro_batch["target_mask"]
