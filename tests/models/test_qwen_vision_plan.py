"""The host-side vision plan against the reference window index, segment boundaries and positions."""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax.models import get_preset, multimodal_position_ids, vision_plan
from facialr1_jax.models.qwen2_5_vl.vision import PADDING_SEGMENT, bucket_size

VISION = get_preset("tiny").vision_config
GRIDS = [
    [[1, 14, 18]],  # ragged windows on both sides
    [[1, 8, 8], [1, 16, 4], [1, 2, 2]],  # several images, exact and single-window sizes
    [[2, 6, 10]],  # two frames: windows and full-attention segments per frame
]


def _boundaries(segment_ids: np.ndarray) -> list[int]:
    """cu_seqlens-style boundaries of runs of equal segment ids."""
    change = np.flatnonzero(np.diff(segment_ids)) + 1
    return [0] + change.tolist() + [segment_ids.size]


@pytest.mark.torch
@pytest.mark.parametrize("grid", GRIDS)
def test_plan_matches_reference_window_index_and_boundaries(grid):
    torch = pytest.importorskip("torch")
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    grid_t = torch.tensor(grid)
    window_index, cu_window = get_vision_window_index(grid_t, VISION.spatial_merge_size, VISION.window_size,
                                                      VISION.patch_size)
    cu_full = get_vision_cu_seqlens(grid_t)
    positions = get_vision_position_ids(grid_t, VISION.spatial_merge_size).numpy()
    plan = vision_plan(grid, VISION)

    unit = VISION.merge_unit
    expected_order = (window_index.numpy()[:, None] * unit + np.arange(unit)).reshape(-1)
    np.testing.assert_array_equal(plan.patch_order, expected_order)
    assert _boundaries(plan.window_segment_ids) == cu_window.tolist()
    assert _boundaries(plan.image_segment_ids) == cu_full.tolist()
    assert len(set(plan.window_segment_ids.tolist())) == len(cu_window) - 1  # ids never repeat across windows
    np.testing.assert_array_equal(plan.rotary_positions, positions[expected_order])
    np.testing.assert_array_equal(plan.merged_restore, torch.argsort(window_index).numpy())


def test_padding_forms_its_own_segment_and_comes_last():
    grid = [[1, 6, 10]]
    real = vision_plan(grid, VISION)
    padded = vision_plan(grid, VISION, pad_to=real.num_patches + 12)
    n = real.num_patches
    for field in ("patch_order", "window_segment_ids", "image_segment_ids", "rotary_positions"):
        np.testing.assert_array_equal(getattr(padded, field)[:n], getattr(real, field))
    np.testing.assert_array_equal(padded.patch_order[n:], np.arange(n, n + 12))
    assert (padded.window_segment_ids[n:] == PADDING_SEGMENT).all()
    assert (padded.image_segment_ids[n:] == PADDING_SEGMENT).all()
    np.testing.assert_array_equal(padded.merged_restore[: n // 4], real.merged_restore)
    np.testing.assert_array_equal(padded.merged_restore[n // 4:], np.arange(n // 4, n // 4 + 3))


@pytest.mark.parametrize("grid, pad_to, message", [
    ([[1, 5, 4]], None, "multiples of spatial_merge_size"),
    ([[0, 4, 4]], None, "t must be >= 1"),
    ([[1, 4]], None, "shape"),
    ([[1, 4, 4]], 8, "at least"),
    ([[1, 4, 4]], 18, "multiple of 4"),
])
def test_plan_rejects_bad_grids_and_padding(grid, pad_to, message):
    with pytest.raises(ValueError, match=message):
        vision_plan(grid, VISION, pad_to=pad_to)


def test_bucket_size():
    assert bucket_size(100, 4) == 128
    assert bucket_size(128, 4) == 128
    assert bucket_size(3, 4, minimum=16) == 16
    assert bucket_size(5, 12) == 12


def test_position_ids_reject_inconsistent_images():
    config = get_preset("tiny")
    img = config.image_token_id
    ids = np.array([[1, config.vision_start_token_id] + [img] * 4 + [config.vision_end_token_id]])
    with pytest.raises(ValueError, match="needs 6 consecutive image tokens"):
        multimodal_position_ids(ids, [[1, 4, 6]], None, config)
    with pytest.raises(ValueError, match="more image placeholder runs"):
        multimodal_position_ids(ids, None, None, config)
    with pytest.raises(ValueError, match="lists 2 images"):
        multimodal_position_ids(ids, [[1, 4, 4], [1, 4, 4]], None, config)
    with pytest.raises(ValueError, match="video"):
        multimodal_position_ids(np.array([[1, config.video_token_id]]), None, None, config)
    with pytest.raises(ValueError, match="attention_mask shape"):
        multimodal_position_ids(ids, [[1, 4, 4]], np.ones((1, 3)), config)


def test_text_positions_skip_left_padding():
    config = get_preset("tiny")
    ids = np.array([[0, 0, 20, 21], [20, 21, 22, 23]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    positions, deltas = multimodal_position_ids(ids, None, mask, config)
    np.testing.assert_array_equal(positions[0], [[0, 0, 0, 1], [0, 1, 2, 3]])
    assert (positions[0] == positions[1]).all() and (positions[1] == positions[2]).all()
    np.testing.assert_array_equal(deltas, [0, 0])


@pytest.mark.parametrize("grid", [[[1, 14, 18]], [[1, 8, 8], [2, 4, 6]]])
def test_blocked_window_and_chunked_full_attention_equal_dense_masks(grid):
    import functools

    import jax
    import jax.numpy as jnp

    from facialr1_jax.models.qwen2_5_vl.vision import _attend, full_segment_attention, windowed_attention

    plan = vision_plan(grid, VISION, pad_to=vision_plan(grid, VISION).num_patches + 8)
    n = plan.num_patches
    keys = jax.random.split(jax.random.key(0), 3)
    query, key, value = (jax.random.normal(k, (n, 2, 8)) for k in keys)
    weights = jnp.asarray(plan.window_segment_ids >= 0, jnp.float32)[:, None, None]  # real patches only

    def dense(q, segments):
        return _attend(q, key, value, segments, segments) * weights

    def full(q, segments):
        return full_segment_attention(q, key, value, segments, query_chunk=24) * weights

    def windowed(q, segments):
        return windowed_attention(q, key, value, segments, VISION.window_patches) * weights

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grad(fn, q, segments):
        return fn(q, segments), jax.grad(lambda x: fn(x, segments).sum())(q)

    windows, images = jnp.asarray(plan.window_segment_ids), jnp.asarray(plan.image_segment_ids)
    for fn, segments in ((full, windows), (full, images), (windowed, windows)):
        got, got_grad = value_and_grad(fn, query, segments)
        expected, expected_grad = value_and_grad(dense, query, segments)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got_grad), np.asarray(expected_grad), atol=1e-5, rtol=1e-5)
