"""Float32 parity with the PyTorch reference: logits, vision tower, multimodal positions, bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialr1_jax.models import Qwen2_5_VL, multimodal_position_ids, vision_plan
from tests.models.hf_reference import image_prompt, left_pad, random_image, reference_logits

pytestmark = pytest.mark.torch

ATOL = 1e-4
RTOL = 1e-4


def _process(image_processor, sizes, seed=0):
    images = [random_image(h, w, seed + i) for i, (h, w) in enumerate(sizes)]
    out = image_processor(images=images, return_tensors="np")
    return out["pixel_values"].astype(np.float32), out["image_grid_thw"]


def test_text_only_logits_match_reference(tiny_ours, tiny_reference, tiny_config):
    ids = np.random.default_rng(0).integers(12, tiny_config.text_config.vocab_size, size=(2, 17))
    ours = np.asarray(tiny_ours(ids))
    expected = reference_logits(tiny_reference, ids)
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=RTOL)


def test_one_large_image_with_several_windows_per_side(tiny_ours, tiny_reference, tiny_config, image_processor):
    pixel_values, grid = _process(image_processor, [(250, 310)])
    plan = vision_plan(grid, tiny_config.vision_config)
    merged_h, merged_w = grid[0, 1] // 2, grid[0, 2] // 2
    window = tiny_config.vision_config.merged_window_size
    # Preconditions that make this test mean something: >= 3 windows per side, a ragged last window,
    # and a full-attention block among windowed ones.
    assert -(-merged_h // window) >= 3 and -(-merged_w // window) >= 3
    assert merged_h % window or merged_w % window
    assert tiny_config.vision_config.fullatt_block_indexes and len(set(plan.window_segment_ids)) > 9
    ids = np.array([image_prompt(tiny_config, int(grid.prod() // 4))])
    ours = np.asarray(tiny_ours(ids, pixel_values=pixel_values, image_grid_thw=grid))
    expected = reference_logits(tiny_reference, ids, pixel_values=pixel_values, image_grid_thw=grid)
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=RTOL)


def test_two_images_of_different_sizes_with_left_padding(tiny_ours, tiny_reference, tiny_config, image_processor):
    pixel_values, grid = _process(image_processor, [(200, 250), (100, 120)], seed=3)
    tokens = grid.prod(axis=1) // 4
    assert tokens[0] != tokens[1]
    rows = [image_prompt(tiny_config, int(tokens[0])),
            image_prompt(tiny_config, int(tokens[1]), before=(50, 51, 52, 53), after=(60,))]
    ids, mask = left_pad(rows, tiny_config.text_config.pad_token_id)
    assert mask[1, 0] == 0  # the second row really is left-padded
    ours = np.asarray(tiny_ours(ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=grid))
    expected = reference_logits(tiny_reference, ids, mask, pixel_values, grid)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=ATOL, rtol=RTOL)


def test_vision_tower_outputs_match_reference(tiny_ours, tiny_reference, tiny_config, image_processor):
    import torch

    pixel_values, grid = _process(image_processor, [(250, 310), (100, 120)], seed=7)
    with torch.no_grad():
        expected = tiny_reference.model.visual(torch.tensor(pixel_values), grid_thw=torch.tensor(grid))
    expected = expected.pooler_output.numpy()
    encode = jax.jit(tiny_ours.encode_images)
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, tiny_config.vision_config))
    ours = np.asarray(encode(jnp.asarray(pixel_values), plan))
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=RTOL)

    # Padding the patch count to a bucket leaves the real merged tokens unchanged and puts padding last.
    real = pixel_values.shape[0]
    padded_plan = jax.tree.map(jnp.asarray, vision_plan(grid, tiny_config.vision_config, pad_to=real + 64))
    padded_pixels = np.concatenate([pixel_values, np.ones((64, pixel_values.shape[1]), np.float32)])
    padded = np.asarray(encode(jnp.asarray(padded_pixels), padded_plan))
    assert padded.shape == (real // 4 + 16, expected.shape[1])
    np.testing.assert_allclose(padded[: real // 4], expected, atol=ATOL, rtol=RTOL)


def test_multimodal_position_ids_match_get_rope_index(tiny_reference, tiny_config):
    import torch

    grid = np.array([[1, 4, 6], [1, 6, 4], [1, 2, 2]])
    tokens = grid.prod(axis=1) // 4
    c = tiny_config
    rows = [
        image_prompt(c, int(tokens[0])) + [c.vision_start_token_id] + [c.image_token_id] * int(tokens[1])
        + [c.vision_end_token_id, 70],  # two images in one row
        [80, 81, 82],  # text only
        image_prompt(c, int(tokens[2]), before=(90,), after=()),  # ends with the image block
    ]
    ids, mask = left_pad(rows, c.text_config.pad_token_id)
    ours, deltas = multimodal_position_ids(ids, grid, mask, c)
    expected, expected_deltas = tiny_reference.model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor((ids == c.image_token_id).astype(np.int64)),
        image_grid_thw=torch.tensor(grid), attention_mask=torch.tensor(mask))
    real = mask.astype(bool)
    np.testing.assert_array_equal(ours[:, real], expected.numpy()[:, real])
    np.testing.assert_array_equal(deltas, expected_deltas.numpy().reshape(-1))


def test_bfloat16_compute_tracks_float32(tiny_ours, tiny_config, tiny_reference_dir):
    from facialr1_jax.models import from_pretrained

    bf16 = from_pretrained(tiny_reference_dir, dtype=jnp.float32, compute_dtype=jnp.bfloat16)
    ids = np.random.default_rng(1).integers(12, tiny_config.text_config.vocab_size, size=(1, 9))
    full = np.asarray(tiny_ours(ids))
    low = bf16(ids)
    assert low.dtype == jnp.bfloat16
    low = np.asarray(low.astype(jnp.float32))
    # bfloat16 keeps ~3 significant digits: close to float32, but not equal to it.
    assert np.max(np.abs(low - full)) < 0.05 * np.max(np.abs(full))
    assert np.max(np.abs(low - full)) > 0
    assert isinstance(bf16, Qwen2_5_VL)
