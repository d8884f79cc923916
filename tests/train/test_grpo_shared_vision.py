"""GRPO batches encode each prompt's image once per micro-batch and point its G rows at the features.

The reference for every comparison is the layout the shared packing replaced: each ROW's image packed
separately (G copies of a prompt's image per micro-batch) and read by the row-major placeholder
cumsum (`feature_offsets` absent).
"""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from facialr1_jax.data import batching
from facialr1_jax.data.examples import PromptExample
from facialr1_jax.models import get_preset, init_model
from facialr1_jax.parallel import make_mesh
from facialr1_jax.train import forward, grpo_loop, state as state_lib, step as step_lib
from facialr1_jax.train.grpo_batch import training_batch

_spec = importlib.util.spec_from_file_location(
    "engine_prompts", os.path.join(os.path.dirname(__file__), "..", "sampling", "prompts.py"))
engine_prompts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_prompts)

COMPLETION = 5


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    model = init_model(config, seed=3)
    model_def, params = state_lib.split_model(model)
    return config, model_def, params


def _examples(config):
    """Three prompts whose images differ in size: 48, 16 and 32 patches (12, 4 and 8 merged tokens)."""
    return [PromptExample(id=f"p{i}", input_ids=np.asarray(ids, np.int32), pixel_values=pixels,
                          image_grid_thw=grid, record=None, instruction="")
            for i, (ids, pixels, grid) in enumerate(engine_prompts.image_prompts(config, seed=4))]


def _batch(config, examples, num_generations, num_micro_batches, seed=0, share_prompts=False):
    """A GRPO batch; the full-sequence layout (one prompt ++ completion per row) unless share_prompts."""
    pad = config.text_config.pad_token_id
    collated = batching.collate_prompts(examples, config, pad_id=pad, max_length=64)
    rows = len(examples) * num_generations
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, config.text_config.vocab_size, (rows, COMPLETION)).astype(np.int32)
    mask = (np.arange(COMPLETION)[None, :] < rng.integers(1, COMPLETION + 1, (rows, 1))).astype(np.float32)
    advantages = rng.standard_normal(rows).astype(np.float32)
    return training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                          tokens, mask, advantages, num_generations=num_generations,
                          num_micro_batches=num_micro_batches, model_config=config, pad_id=pad,
                          share_prompts=share_prompts)


def _per_row_vision(config, examples, num_generations, num_micro_batches):
    """The pre-sharing layout: every row's own copy of its prompt's image, no feature offsets."""
    rows = len(examples) * num_generations
    prompt_of_row = (np.arange(rows) // num_generations).reshape(num_micro_batches, -1)
    merge_unit = config.vision_config.merge_unit
    parts = [([examples[p].pixel_values for p in micro], [examples[p].image_grid_thw for p in micro])
             for micro in prompt_of_row]
    pad_to = batching.patch_bucket(max(sum(x.shape[0] for x in pixels) for pixels, _ in parts), merge_unit)
    packed = [batching.pack_vision(pixels, grids, config, pad_to) for pixels, grids in parts]
    return {name: np.stack([part[name] for part in packed]) for name in packed[0]}


def _with_vision(batch, vision):
    out = dict(batch)
    out["vision"] = vision
    return out


def _log_probs(model_def, params, batch):
    """[num_micro, rows, T] completion log-probs, one jitted program per batch structure."""
    fn = jax.jit(lambda p, b: jax.lax.map(
        lambda micro: forward.completion_log_probs(model_def.merge(p), micro, COMPLETION), b))
    return np.asarray(fn(params, batch))


def test_offsets_point_each_row_at_its_prompts_image_when_a_micro_batch_splits_a_group(tiny):
    """P=3, G=2 in 2 micro-batches: [p0, p0, p1 | p1, p2, p2]; images of 48, 16 and 32 patches."""
    config, _, _ = tiny
    examples = _examples(config)
    merge_unit = config.vision_config.merge_unit
    batch = _batch(config, examples, num_generations=2, num_micro_batches=2)
    vision = batch["vision"]
    offsets = vision["feature_offsets"]
    assert offsets.dtype == np.int32 and offsets.shape == (2, 3)
    prompt_of_row = (np.arange(6) // 2).reshape(2, 3)
    for micro in range(2):
        for row in range(3):
            pixels = examples[prompt_of_row[micro, row]].pixel_values
            first_patch = int(offsets[micro, row]) * merge_unit
            np.testing.assert_array_equal(vision["pixel_values"][micro, first_patch:first_patch + len(pixels)], pixels)
    # Micro-batch 0 packs p0 (12 merged rows) then p1; micro-batch 1 packs p1 (4 merged rows) then p2.
    sizes = [e.pixel_values.shape[0] // merge_unit for e in examples]
    assert sizes == [12, 4, 8]
    np.testing.assert_array_equal(offsets, [[0, 0, sizes[0]], [0, sizes[1], sizes[1]]])


def test_packed_patches_are_the_distinct_prompts_patches_bucketed(tiny):
    config, _, _ = tiny
    examples = _examples(config)
    merge_unit = config.vision_config.merge_unit
    distinct_patches = sum(e.pixel_values.shape[0] for e in examples)  # one micro-batch holds all 3 prompts
    shared = _batch(config, examples, num_generations=4, num_micro_batches=1)["vision"]
    per_row = _per_row_vision(config, examples, num_generations=4, num_micro_batches=1)
    assert shared["pixel_values"].shape[1] == batching.patch_bucket(distinct_patches, merge_unit)
    assert per_row["pixel_values"].shape[1] == batching.patch_bucket(4 * distinct_patches, merge_unit)
    assert shared["pixel_values"].shape[1] * 4 <= per_row["pixel_values"].shape[1]
    np.testing.assert_array_equal(shared["pixel_values"][0, distinct_patches:], 0.0)  # only padding after them


def test_an_image_that_does_not_merge_evenly_is_refused(tiny):
    config, _, _ = tiny
    examples = _examples(config)
    examples[1] = dataclasses.replace(examples[1], pixel_values=examples[1].pixel_values[:-1])
    with pytest.raises(ValueError, match="prompt 1's image has 15 patches, not a multiple of the merge unit 4"):
        _batch(config, examples, num_generations=2, num_micro_batches=1)


def test_embed_with_offsets_equals_the_row_major_cumsum(tiny):
    """Offsets = the exclusive cumsum of each row's placeholder count read exactly what the old path read."""
    config, model_def, params = tiny
    model = model_def.merge(params)
    rng = np.random.default_rng(1)
    counts = np.array([3, 0, 5, 2])
    length = 9
    input_ids = rng.integers(20, 60, (len(counts), length)).astype(np.int32)
    for row, count in enumerate(counts):
        columns = np.sort(rng.choice(length, count, replace=False))
        input_ids[row, columns] = config.image_token_id
    features = rng.standard_normal((counts.sum() + 2, config.text_config.hidden_size)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    old = np.asarray(model.embed(jnp.asarray(input_ids), jnp.asarray(features)))
    new = np.asarray(model.embed(jnp.asarray(input_ids), jnp.asarray(features), jnp.asarray(offsets)))
    np.testing.assert_array_equal(new, old)
    # Two rows pointed at the same features read the same embeddings there.
    shared = np.asarray(model.embed(jnp.asarray(input_ids[[0, 0]]), jnp.asarray(features),
                                    jnp.asarray([2, 2], np.int32)))
    is_image = input_ids[0] == config.image_token_id
    np.testing.assert_allclose(shared[0][is_image], features[2:2 + counts[0]].astype(shared.dtype), rtol=1e-6)
    with pytest.raises(ValueError, match="feature_offsets has shape"):
        model.embed(jnp.asarray(input_ids), jnp.asarray(features), jnp.asarray(offsets[:2]))
    positions = jnp.broadcast_to(jnp.arange(length), (3, len(counts), length))
    with pytest.raises(ValueError, match="feature_offsets given without pixel_values"):
        model.forward(jnp.asarray(input_ids), positions, feature_offsets=jnp.asarray(offsets))


def test_shared_images_give_the_per_row_log_probs_and_gradients(tiny):
    """P=3, G=2 in 2 micro-batches of 3 rows (a group split across them), images of different sizes."""
    config, model_def, params = tiny
    examples = _examples(config)
    num_generations, num_micro_batches = 2, 2
    shared = _batch(config, examples, num_generations, num_micro_batches)
    per_row = _with_vision(shared, _per_row_vision(config, examples, num_generations, num_micro_batches))
    mask = shared["completion_mask"]
    np.testing.assert_allclose(_log_probs(model_def, params, shared) * mask,
                               _log_probs(model_def, params, per_row) * mask, atol=1e-5)

    settings = dict(eps_low=0.2, eps_high=0.28, beta=0.0, kl_estimator="k3", aggregation="seq_mean_token_mean",
                    ratio_level="token", max_length=COMPLETION)
    loss_fn = grpo_loop.make_grpo_loss(settings, use_stored_old_log_probs=False)

    @jax.jit
    def mean_grads(p, batch):
        summed, _, denominator, _ = step_lib.accumulate(model_def, loss_fn, p, batch, jax.random.PRNGKey(0),
                                                        with_grads=True)
        return jax.tree.map(lambda g: g / denominator, summed)

    grads = [jax.tree.map(np.asarray, mean_grads(params, batch)) for batch in (shared, per_row)]
    vision_tower_moved = False
    for path, ours, reference in zip(jax.tree_util.tree_leaves_with_path(grads[0]), jax.tree.leaves(grads[0]),
                                     jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path[0]))
        vision_tower_moved |= "visual" in jax.tree_util.keystr(path[0]) and np.abs(reference).max() > 0
    assert vision_tower_moved  # the image features are in the gradient, so the comparison covers them


def test_shared_images_under_a_data_sharded_mesh(tiny):
    """Rows split over 2 devices (3 rows each, straddling groups); the offsets stay replicated."""
    config, model_def, params = tiny
    examples = _examples(config)
    shared = _batch(config, examples, num_generations=2, num_micro_batches=1)
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    assert step_lib.batch_shardings(shared, mesh)["input_ids"].spec == PartitionSpec(None, "data")
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
    log_prob_fn = grpo_loop.make_log_prob_fn(model_def, replicated, mesh, COMPLETION, compiler_options=None)
    sharded = np.asarray(log_prob_fn(jax.device_put(params, replicated), shared))
    reference = _log_probs(model_def, params, _with_vision(shared, _per_row_vision(config, examples, 2, 1)))
    mask = shared["completion_mask"]
    np.testing.assert_allclose(sharded * mask, reference * mask, atol=1e-5)


def test_shared_prompt_layout_under_a_data_sharded_mesh(tiny):
    """The shared-prompt layout on 2 devices: 6 completion rows split 3 / 3 (straddling groups), the 3
    prompts replicated; log-probs equal the full-sequence layout's on one device."""
    config, model_def, params = tiny
    examples = _examples(config)
    shared = _batch(config, examples, num_generations=2, num_micro_batches=1, share_prompts=True)
    full = _batch(config, examples, num_generations=2, num_micro_batches=1)
    assert "prompt_ids" in shared and "input_ids" not in shared
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    shardings = step_lib.batch_shardings(shared, mesh)
    assert shardings["completion_ids"].spec == PartitionSpec(None, "data")
    assert shardings["prompt_ids"].spec == PartitionSpec()
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
    log_prob_fn = grpo_loop.make_log_prob_fn(model_def, replicated, mesh, COMPLETION, compiler_options=None)
    sharded = np.asarray(log_prob_fn(jax.device_put(params, replicated), shared))
    reference = _log_probs(model_def, params, full)
    mask = shared["completion_mask"]
    np.testing.assert_allclose(sharded * mask, reference * mask, atol=1e-5)
