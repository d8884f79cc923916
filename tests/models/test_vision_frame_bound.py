"""Frame-by-frame full attention in the vision tower: same values as the general path, less work, and a
frame that breaks the promised bound still gets the exact result."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.models import Qwen2_5_VL, bound_frame_patches, get_preset, vision_plan
from facialr1_jax.models.qwen2_5_vl.vision import (
    _attend,
    frame_patches_for,
    full_segment_attention,
    segments_fit,
)

VISION = get_preset("tiny").vision_config
SAME_IMAGE_G_TIMES = [[1, 8, 8]] * 8  # a GRPO batch: one prompt's image repeated G = 8 times (64 patches each)


def _inputs(plan, seed=0):
    n = plan.num_patches
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(k, (n, 2, 8)) for k in keys)


@functools.partial(jax.jit, static_argnums=(0,))
def _value_and_grad(bound, query, key, value, segments, weights):
    def fn(q):
        return full_segment_attention(q, key, value, segments, query_chunk=96, segment_bound=bound) * weights
    return fn(query), jax.grad(lambda q: fn(q).sum())(query)


@pytest.mark.parametrize("grid, bound", [
    (SAME_IMAGE_G_TIMES, 64),                      # every frame exactly at the bound
    ([[1, 8, 8], [1, 4, 6], [2, 6, 4], [1, 2, 2]], 64),  # ragged frames below the bound, a 2-frame video
    ([[1, 8, 8], [1, 12, 8], [1, 8, 8], [1, 4, 4]], 64),  # one 96-patch frame breaks the bound: general path
])
def test_frame_blocks_equal_dense_attention_on_real_patches(grid, bound):
    plan = vision_plan(grid, VISION, pad_to=vision_plan(grid, VISION).num_patches + 20)
    query, key, value = _inputs(plan)
    segments = jnp.asarray(plan.image_segment_ids)
    weights = jnp.asarray(plan.image_segment_ids >= 0, jnp.float32)[:, None, None]  # padding is never read
    expected = _attend(query, key, value, segments, segments) * weights
    expected_grad = jax.grad(lambda q: (_attend(q, key, value, segments, segments) * weights).sum())(query)
    got, got_grad = _value_and_grad(bound, query, key, value, segments, weights)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(expected_grad), atol=1e-5, rtol=1e-5)
    fits = max(t_h_w[1] * t_h_w[2] for t_h_w in np.asarray(grid)) <= bound
    assert bool(segments_fit(segments, bound)) == fits


def test_segments_fit_measures_spans_and_ignores_padding():
    ids = jnp.asarray([0, 0, 0, 1, 1, -1, -1, -1, -1, -1], jnp.int32)
    assert bool(segments_fit(ids, 3)) and not bool(segments_fit(ids, 2))
    # A segment that comes back later spans from its first to its last position.
    assert not bool(segments_fit(jnp.asarray([0, 1, 1, 0], jnp.int32), 3))


def test_frame_blocks_read_fewer_scores():
    """The point of the bound: G copies of one image cost G small attentions, not one G^2-sized one."""
    plan = vision_plan(SAME_IMAGE_G_TIMES, VISION)
    query, key, value = _inputs(plan)
    segments = jnp.asarray(plan.image_segment_ids)

    def flops(bound):
        fn = jax.jit(lambda q: full_segment_attention(q, key, value, segments, query_chunk=1024, segment_bound=bound))
        return fn.lower(query).compile().cost_analysis()["flops"]

    assert flops(64) < 0.5 * flops(None), (flops(64), flops(None))


def test_bound_from_max_pixels_and_the_tower_uses_it():
    assert frame_patches_for(112 * 112, VISION) == 64
    assert frame_patches_for(448 * 448, VISION) == 1024
    assert frame_patches_for(100 * 100, VISION) == 48  # 51 patches, down to a multiple of the merge unit
    with pytest.raises(ValueError, match="max_pixels"):
        frame_patches_for(0, VISION)
    with pytest.raises(TypeError, match="VisionTower"):
        bound_frame_patches(object(), 112 * 112)

    model = Qwen2_5_VL(get_preset("tiny"), rngs=nnx.Rngs(0))
    plan = vision_plan(SAME_IMAGE_G_TIMES, VISION)
    pixels = jax.random.normal(jax.random.key(1), (plan.num_patches, VISION.patch_dim))
    plan_arrays = jax.tree.map(jnp.asarray, plan)
    general = model.visual(pixels, plan_arrays)
    assert bound_frame_patches(model, 112 * 112) == 64 == model.visual.frame_patches_bound
    bounded = model.visual(pixels, plan_arrays)
    np.testing.assert_allclose(np.asarray(bounded), np.asarray(general), atol=1e-5, rtol=1e-5)
