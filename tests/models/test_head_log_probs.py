"""The LM head's log p(target) with its hand-written backward pass (models/qwen2_5_vl/head_log_probs.py)
equals autodiff of the plain expression: values, gradients, both head layouts, chunked through the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax import models
from facialr1_jax.models.qwen2_5_vl.head_log_probs import target_log_probs


def _case(seed: int, vocab_axis: int, positions=(3, 11), hidden=16, vocab=97):
    rng = np.random.default_rng(seed)
    hidden_states = jnp.asarray(rng.standard_normal((*positions, hidden)).astype(np.float32))
    weight_shape = (hidden, vocab) if vocab_axis == 1 else (vocab, hidden)
    weight = jnp.asarray(rng.standard_normal(weight_shape).astype(np.float32) * 0.3)
    targets = jnp.asarray(rng.integers(0, vocab, positions).astype(np.int32))
    cotangent = jnp.asarray(rng.standard_normal(positions).astype(np.float32))
    return hidden_states, weight, targets, cotangent


def _autodiff_log_probs(hidden, weight, targets, vocab_axis, dtype):
    equation = "...d,dv->...v" if vocab_axis == 1 else "...d,vd->...v"
    logits = jnp.einsum(equation, hidden.astype(dtype), weight.astype(dtype)).astype(jnp.float32)
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)


@pytest.mark.parametrize("vocab_axis", [1, 0])
def test_values_and_gradients_equal_autodiff(vocab_axis):
    hidden, weight, targets, cotangent = _case(seed=vocab_axis, vocab_axis=vocab_axis)

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w, targets, vocab_axis, jnp.float32) * cotangent)

    ours = jax.jit(jax.value_and_grad(loss(target_log_probs), argnums=(0, 1)))(hidden, weight)
    plain = jax.jit(jax.value_and_grad(loss(_autodiff_log_probs), argnums=(0, 1)))(hidden, weight)
    np.testing.assert_allclose(float(ours[0]), float(plain[0]), rtol=1e-6)
    for got, want in zip(ours[1], plain[1]):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6 * float(jnp.abs(want).max()) + 1e-7)
    values = target_log_probs(hidden, weight, targets, vocab_axis, jnp.float32)
    assert values.shape == targets.shape and values.dtype == jnp.float32
    assert np.all(np.asarray(values) <= 0.0)


def test_bfloat16_compute_keeps_the_input_dtypes_of_the_gradients():
    # Mixed precision as the 3B/7B configs run it: float32 storage, bfloat16 matmuls, float32 softmax.
    hidden, weight, targets, cotangent = _case(seed=5, vocab_axis=1)

    def loss(fn):
        return lambda h, w: jnp.sum(fn(h, w, targets, 1, jnp.bfloat16) * cotangent)

    ours = jax.grad(loss(target_log_probs), argnums=(0, 1))(hidden, weight)
    plain = jax.grad(loss(_autodiff_log_probs), argnums=(0, 1))(hidden, weight)
    for got, want in zip(ours, plain):
        assert got.dtype == want.dtype == jnp.float32
        # Both round their matmuls to bfloat16 (8 bits of mantissa), not necessarily at the same points.
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-2 * float(jnp.abs(want).max()))


def test_the_backward_pass_scatters_nothing():
    # Why the module exists: autodiff of take_along_axis scatters the picked cotangents into a
    # (positions, vocab) zero array; the closed form compares with an iota instead.
    hidden, weight, targets, cotangent = _case(seed=2, vocab_axis=1)

    def hlo(fn):
        grad = jax.grad(lambda h, w: jnp.sum(fn(h, w, targets, 1, jnp.float32) * cotangent), argnums=(0, 1))
        return jax.jit(grad).lower(hidden, weight).compile().as_text()

    assert " scatter(" in hlo(_autodiff_log_probs), "the autodiff form no longer scatters: rethink this test"
    assert " scatter(" not in hlo(target_log_probs)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_token_log_probs_equal_the_unchunked_autodiff(tied):
    # Through the model: 37 positions in chunks of 8 (the last one padded), both head layouts; the
    # gradients reach the head (or the tied embedding) and the hidden states as plain autodiff's do.
    config = models.get_preset("tiny", tie_word_embeddings=tied)
    model = models.init_model(config, seed=1)
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((3, 37, config.text_config.hidden_size)).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, config.text_config.vocab_size, (3, 37)).astype(np.int32))
    cotangent = jnp.asarray(rng.standard_normal((3, 37)).astype(np.float32))

    def plain(model, h):
        logits = model.logits(h).astype(jnp.float32)
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jnp.sum((picked - jax.nn.logsumexp(logits, axis=-1)) * cotangent)

    def chunked(model, h):
        return jnp.sum(model.token_log_probs(h, targets, chunk_size=8) * cotangent)

    want_value, (want_model, want_hidden) = nnx.value_and_grad(plain, argnums=(0, 1))(model, hidden)
    value, (got_model, got_hidden) = nnx.value_and_grad(chunked, argnums=(0, 1))(model, hidden)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-6)
    close = dict(rtol=1e-5, atol=1e-5)  # float32 sums in another order; gradients are O(1) here
    np.testing.assert_allclose(np.asarray(got_hidden), np.asarray(want_hidden), **close)
    got_leaves, want_leaves = jax.tree.leaves(got_model), jax.tree.leaves(want_model)
    assert len(got_leaves) == len(want_leaves)
    head = (lambda g: g["language_model"]["embed_tokens"]) if tied else (lambda g: g["lm_head"]["kernel"])
    assert float(jnp.abs(head(want_model)[...]).max()) > 0  # the head really gets a gradient
    np.testing.assert_allclose(np.asarray(head(got_model)[...]), np.asarray(head(want_model)[...]), **close)
    for got, want in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **close)
