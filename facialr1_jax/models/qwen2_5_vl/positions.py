"""Multimodal rotary (M-RoPE) position ids, computed on the host.

Each token has three positions (temporal, height, width). Text tokens advance all three together by
one. An image of t x h x w patches occupies t * (h/2) * (w/2) placeholder tokens whose positions are
the grid coordinates offset by the position where the image starts; after the image, text resumes at
`start + max(h, w) / 2`. Padding (attention_mask == 0) is skipped: the first real token of every row
has position 0, and padded slots get position 0 (they are masked out anyway).

`rope_deltas[b] = (largest position in row b) + 1 - (real tokens in row b)`: a token decoded after a
prompt of n real tokens sits at position `n + rope_deltas[b]` in all three streams.

This is the semantics of the reference `Qwen2_5_VLModel.get_rope_index` for images; videos are not
supported by this project's processor and raise.
"""

from __future__ import annotations

import numpy as np

from facialr1_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig


def multimodal_position_ids(input_ids, image_grid_thw, attention_mask, config: Qwen2_5_VLConfig
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(position_ids (3, B, L) int32, rope_deltas (B,) int32) for a batch of prompts.

    Images are consumed in order across the whole batch (row 0's images first), as the processor
    emits them. Each image's placeholder tokens must be consecutive.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {input_ids.shape}")
    batch, length = input_ids.shape
    mask = (np.ones_like(input_ids, dtype=bool) if attention_mask is None
            else np.asarray(attention_mask).astype(bool))
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
    if np.any((input_ids == config.video_token_id) & mask):
        raise ValueError(f"input_ids contain video tokens (id {config.video_token_id}); videos are not supported")
    grids = (np.zeros((0, 3), np.int64) if image_grid_thw is None
             else np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3))
    merge = config.vision_config.spatial_merge_size
    position_ids = np.zeros((3, batch, length), dtype=np.int64)
    deltas = np.zeros((batch,), dtype=np.int64)
    next_image = 0
    for row in range(batch):
        slots = np.flatnonzero(mask[row])
        tokens = input_ids[row, slots]
        is_image = tokens == config.image_token_id
        row_positions = np.zeros((3, tokens.size), dtype=np.int64)
        cursor = 0  # index into this row's real tokens
        current = 0  # next position value
        while cursor < tokens.size:
            if not is_image[cursor]:
                run_end = cursor
                while run_end < tokens.size and not is_image[run_end]:
                    run_end += 1
                row_positions[:, cursor:run_end] = current + np.arange(run_end - cursor)
                current += run_end - cursor
                cursor = run_end
                continue
            if next_image >= len(grids):
                raise ValueError(f"row {row} has more image placeholder runs than image_grid_thw provides "
                                 f"({len(grids)} images)")
            t, h, w = (int(v) for v in grids[next_image])
            grid_h, grid_w = h // merge, w // merge
            count = t * grid_h * grid_w
            block = is_image[cursor:cursor + count]
            if block.size != count or not block.all():
                raise ValueError(f"row {row}: image {next_image} with grid {[t, h, w]} needs {count} consecutive "
                                 f"image tokens (id {config.image_token_id}) at real token {cursor}, found "
                                 f"{int(np.argmin(np.append(block, False)))}")
            temporal, rows, cols = np.meshgrid(np.arange(t), np.arange(grid_h), np.arange(grid_w), indexing="ij")
            row_positions[:, cursor:cursor + count] = np.stack([temporal, rows, cols]).reshape(3, -1) + current
            current += max(grid_h, grid_w)
            cursor += count
            next_image += 1
        position_ids[:, row, slots] = row_positions
        deltas[row] = (row_positions.max() + 1 if tokens.size else 0) - tokens.size
    if next_image != len(grids):
        raise ValueError(f"image_grid_thw lists {len(grids)} images but input_ids contain {next_image}")
    return position_ids.astype(np.int32), deltas.astype(np.int32)


def text_position_ids(positions) -> np.ndarray:
    """(3, B, L) ids for text-only positions (B, L): the same value in all three streams."""
    positions = np.asarray(positions)
    return np.broadcast_to(positions[None], (3,) + positions.shape).astype(np.int32)


def decode_position_ids(real_tokens_before, rope_deltas):
    """(3, B, 1) M-RoPE ids of the next decoded token (jit-friendly, jnp).

    real_tokens_before (B,): real (unpadded) tokens already in the sequence -- prompt plus tokens decoded
    so far; rope_deltas (B,): from `multimodal_position_ids`. All three streams advance together.
    """
    import jax.numpy as jnp

    position = (jnp.asarray(real_tokens_before) + jnp.asarray(rope_deltas)).astype(jnp.int32)
    return jnp.broadcast_to(position[None, :, None], (3, position.shape[0], 1))
