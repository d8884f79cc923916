"""KV cache: prefill then token-by-token decode gives the logits of one uncached forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from facialr1_jax.models import (
    decode_position_ids,
    get_preset,
    init_model,
    multimodal_position_ids,
    vision_plan,
)
from tests.models.hf_reference import image_prompt, left_pad

CONFIG = get_preset("tiny")


def _model():
    return init_model(CONFIG, seed=3)


def _hidden(model, ids, positions):
    forward = jax.jit(lambda i, p: model.forward(i, p, return_hidden=True)[0])
    return forward(jnp.asarray(ids), jnp.asarray(positions))


def test_prefill_and_decode_equal_uncached_forward():
    model = _model()
    grid = np.array([[1, 6, 8], [1, 4, 4]])
    tokens = grid.prod(axis=1) // 4
    prompts = [image_prompt(CONFIG, int(tokens[0])), image_prompt(CONFIG, int(tokens[1]), before=(70,), after=(71,))]
    prompt_ids, prompt_mask = left_pad(prompts, CONFIG.text_config.pad_token_id)
    batch, prompt_len = prompt_ids.shape
    continuation = np.random.default_rng(0).integers(12, CONFIG.text_config.vocab_size, size=(batch, 5))
    steps = continuation.shape[1]
    pixel_values = np.random.default_rng(1).standard_normal(
        (int(grid.prod(axis=1).sum()), CONFIG.vision_config.patch_dim)).astype(np.float32)
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, CONFIG.vision_config))

    # Reference: the whole sequence (prompt + continuation) in one uncached forward.
    full_ids = np.concatenate([prompt_ids, continuation], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones_like(continuation)], axis=1)
    full_positions, _ = multimodal_position_ids(full_ids, grid, full_mask, CONFIG)
    uncached, _ = jax.jit(model.forward)(jnp.asarray(full_ids), jnp.asarray(full_positions),
                                         jnp.asarray(full_mask), jnp.asarray(pixel_values), plan)

    # Cached: prefill the prompt into a cache longer than needed, then decode one token at a time.
    max_len = prompt_len + steps + 3
    positions, rope_deltas = multimodal_position_ids(prompt_ids, grid, prompt_mask, CONFIG)
    slot_mask = np.zeros((batch, max_len), dtype=bool)
    slot_mask[:, :prompt_len] = prompt_mask
    cache = model.init_cache(batch, max_len)
    prefill = jax.jit(lambda ids, pos, mask, pv, p, c: model.forward(ids, pos, mask, pv, p, c, 0))
    logits, cache = prefill(jnp.asarray(prompt_ids), jnp.asarray(positions), jnp.asarray(slot_mask),
                            jnp.asarray(pixel_values), plan, cache)
    real = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(uncached)[:, :prompt_len][real], atol=1e-4,
                               rtol=1e-4)

    decode = jax.jit(lambda tok, pos, mask, c, index: model.forward(tok, pos, mask, cache=c, cache_index=index))
    real_tokens = prompt_mask.sum(axis=1)
    for step in range(steps):
        slot = prompt_len + step
        slot_mask[:, slot] = True
        position_ids = decode_position_ids(real_tokens + step, rope_deltas)
        np.testing.assert_array_equal(np.asarray(position_ids)[:, :, 0], full_positions[:, :, slot])
        step_logits, cache = decode(jnp.asarray(continuation[:, step:step + 1]), position_ids,
                                    jnp.asarray(slot_mask), cache, jnp.int32(slot))
        np.testing.assert_allclose(np.asarray(step_logits)[:, 0], np.asarray(uncached)[:, slot], atol=1e-4,
                                   rtol=1e-4)
    assert decode._cache_size() == 1  # one compiled decode step for every position


def test_token_log_probs_equal_log_softmax_of_logits():
    model = _model()
    ids = np.random.default_rng(2).integers(0, CONFIG.text_config.vocab_size, size=(2, 11))
    positions = np.broadcast_to(np.arange(11)[None, None], (3, 2, 11))
    hidden = _hidden(model, ids, positions)
    targets = np.roll(ids, -1, axis=1)
    expected = jax.nn.log_softmax(jax.jit(model.logits)(hidden), axis=-1)
    expected = np.take_along_axis(np.asarray(expected), targets[..., None], axis=-1)[..., 0]
    for chunk in (4, 11, 64):  # uneven chunks, exact, larger than the sequence
        log_probs = jax.jit(model.token_log_probs, static_argnames="chunk_size")
        got = np.asarray(log_probs(hidden, jnp.asarray(targets), chunk_size=chunk))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_token_log_probs_gradient_matches_full_logits():
    model = _model()
    ids = np.random.default_rng(4).integers(0, CONFIG.text_config.vocab_size, size=(1, 6))
    positions = np.broadcast_to(np.arange(6)[None, None], (3, 1, 6))
    hidden = _hidden(model, ids, positions)
    targets = jnp.asarray(np.roll(ids, -1, axis=1))

    def chunked(h):
        return model.token_log_probs(h, targets, chunk_size=4).sum()

    def full(h):
        logp = jax.nn.log_softmax(model.logits(h), axis=-1)
        return jnp.take_along_axis(logp, targets[..., None], axis=-1).sum()

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(chunked))(hidden)),
                               np.asarray(jax.jit(jax.grad(full))(hidden)),
                               atol=1e-5, rtol=1e-5)


def test_remat_wraps_every_vision_block_and_decoder_layer():
    # Rematerialisation only changes what the backward pass stores, which jax.checkpoint guarantees;
    # what needs checking is that each block and layer is wrapped (read from the gradient's jaxpr, so
    # nothing is compiled).
    from flax import nnx

    grid = np.array([[1, 4, 8]])
    ids = jnp.asarray(np.array([image_prompt(CONFIG, 8)]))
    positions = jnp.asarray(multimodal_position_ids(np.asarray(ids), grid, None, CONFIG)[0])
    pixels = jnp.zeros((32, CONFIG.vision_config.patch_dim), jnp.float32)
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, CONFIG.vision_config))

    def checkpoints_in_gradient(remat: bool) -> int:
        graphdef, state = nnx.split(init_model(CONFIG, seed=5, remat=remat))

        def loss(state):
            logits, _ = nnx.merge(graphdef, state).forward(ids, positions, None, pixels, plan)
            return logits.sum()

        jaxpr = jax.make_jaxpr(jax.grad(loss))(state).jaxpr
        return sum(eqn.primitive.name in ("checkpoint", "remat2") for eqn in jaxpr.eqns)

    assert checkpoints_in_gradient(False) == 0
    expected = CONFIG.vision_config.depth + CONFIG.text_config.num_hidden_layers
    assert checkpoints_in_gradient(True) == expected
