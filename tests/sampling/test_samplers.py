"""Token choice: filters against transformers' logits warpers, sampling frequencies, greedy, log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialr1_jax.sampling import SamplingConfig, choose_tokens, filter_logits, row_keys, step_keys
from facialr1_jax.sampling.samplers import suppress_tokens

CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7, top_k=5),
    SamplingConfig(temperature=1.3, top_p=0.8),
    SamplingConfig(temperature=0.9, top_k=12, top_p=0.6),
    SamplingConfig(temperature=1.0, top_p=0.05),  # keeps only the most likely token
]


@pytest.mark.torch
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_filters_equal_transformers_warpers(config):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32) * 3
    logits[0, :4] = logits[0, 4]  # ties at a threshold
    scores = torch.tensor(logits)
    scores = TemperatureLogitsWarper(config.temperature)(None, scores)
    if config.top_k:
        scores = TopKLogitsWarper(config.top_k)(None, scores)
    if config.top_p < 1.0:
        scores = TopPLogitsWarper(config.top_p)(None, scores)
    expected = scores.numpy()
    got = np.asarray(jax.jit(filter_logits, static_argnums=1)(jnp.asarray(logits), config))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    kept = np.isfinite(expected)
    np.testing.assert_allclose(got[kept], expected[kept], rtol=1e-6, atol=1e-6)


def test_sampling_frequencies_follow_the_filtered_distribution():
    config = SamplingConfig(temperature=0.8, top_k=6, top_p=0.9)
    logits = jnp.asarray(np.random.default_rng(1).standard_normal(10).astype(np.float32) * 2)
    draws = 20_000

    @jax.jit
    def draw(key):
        keys = step_keys(row_keys(key, draws), 0)
        return choose_tokens(jnp.broadcast_to(logits, (draws, 10)), keys, config)

    tokens, sampled, policy = draw(jax.random.key(0))
    target = np.asarray(jax.nn.softmax(filter_logits(logits[None], config))[0])
    frequencies = np.bincount(np.asarray(tokens), minlength=10) / draws
    assert np.all(frequencies[target == 0] == 0), "a filtered token was drawn"
    # 4 standard errors of a binomial proportion at these sample sizes.
    np.testing.assert_allclose(frequencies, target, atol=4 * np.sqrt(0.25 / draws))
    np.testing.assert_allclose(np.asarray(sampled), np.log(target[np.asarray(tokens)]), atol=1e-5)
    scaled_policy = np.asarray(jax.nn.log_softmax(logits / config.temperature))
    np.testing.assert_allclose(np.asarray(policy), scaled_policy[np.asarray(tokens)], atol=1e-5)


def test_greedy_takes_the_argmax_and_reports_policy_log_probs():
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((5, 30)).astype(np.float32))
    tokens, sampled, policy = choose_tokens(logits, None, SamplingConfig(temperature=0.0))
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(np.asarray(logits), axis=-1))
    expected = np.asarray(jax.nn.log_softmax(logits))[np.arange(5), np.asarray(tokens)]
    np.testing.assert_allclose(np.asarray(sampled), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(policy), expected, atol=1e-6)


def test_suppressed_tokens_are_never_chosen():
    logits = np.zeros((3, 8), np.float32)
    logits[:, 5] = 10.0  # the argmax, suppressed
    suppressed = jnp.asarray([5, -1, -1, -1], jnp.int32)
    choose = jax.jit(choose_tokens, static_argnums=2)
    tokens, _, _ = choose(jnp.asarray(logits), None, SamplingConfig(temperature=0.0), suppressed)
    assert not np.any(np.asarray(tokens) == 5)
    keys = step_keys(row_keys(jax.random.key(3), 3), 0)
    tokens, sampled, _ = choose(jnp.asarray(logits), keys, SamplingConfig(temperature=1.0), suppressed)
    assert not np.any(np.asarray(tokens) == 5)
    np.testing.assert_allclose(np.asarray(sampled), np.log(1 / 7), atol=1e-6)  # uniform over the other 7
    assert np.isneginf(np.asarray(suppress_tokens(jnp.asarray(logits), suppressed))[:, 5]).all()


def test_row_keys_do_not_depend_on_the_number_of_rows():
    key = jax.random.key(7)
    few, many = row_keys(key, 3), row_keys(key, 9)
    np.testing.assert_array_equal(jax.random.key_data(few), jax.random.key_data(many[:3]))


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0),
                                    dict(top_p=1.5)])
def test_bad_sampling_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)


def test_only_tokens_with_weight_are_drawn():
    # Rows with a single finite logit at the start, the end and inside of a vocabulary that does not
    # fill its last block (10 = 4 + 4 + 2): every draw must return that token.
    from facialr1_jax.sampling.samplers import sample_tokens

    vocab, draws = 10, 2000
    logits = np.full((3, vocab), -np.inf, np.float32)
    for row, token in enumerate((0, vocab - 1, 5)):
        logits[row, token] = 0.0

    @jax.jit
    def draw(key):
        keys = row_keys(key, draws * 3)
        tokens, log_probs = sample_tokens(jnp.repeat(jnp.asarray(logits), draws, axis=0), keys)
        return tokens.reshape(3, draws), log_probs

    tokens, log_probs = draw(jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(tokens), np.array([[0], [vocab - 1], [5]]).repeat(draws, axis=1))
    np.testing.assert_array_equal(np.asarray(log_probs), 0.0)  # probability 1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_policy_log_probs_count_the_mass_of_suppressed_tokens(temperature):
    # A suppressed token far more likely than the rest: the policy log-prob of what is drawn is taken
    # over the whole vocabulary (about -scale / temperature here), exactly, not lost to underflow.
    logits = np.random.default_rng(4).standard_normal((4, 50)).astype(np.float32)
    logits[:, 7] = 120.0
    suppressed = jnp.asarray([7, -1, 3, -1], jnp.int32)
    keys = step_keys(row_keys(jax.random.key(1), 4), 0)
    choose = jax.jit(choose_tokens, static_argnums=2)
    tokens, sampled, policy = choose(jnp.asarray(logits), keys, SamplingConfig(temperature=temperature), suppressed)
    tokens = np.asarray(tokens)
    assert not np.isin(tokens, [3, 7]).any()
    scaled = logits.astype(np.float64) / temperature
    full = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) - scaled.max(
        -1, keepdims=True)
    allowed = np.where(np.isin(np.arange(50), [3, 7]), -np.inf, scaled)
    renormalised = allowed - np.log(np.exp(allowed - allowed.max(-1, keepdims=True)).sum(-1, keepdims=True)) - (
        allowed.max(-1, keepdims=True))
    rows = np.arange(4)
    np.testing.assert_allclose(np.asarray(policy), full[rows, tokens], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sampled), renormalised[rows, tokens], atol=1e-5)


def test_step_uniforms_are_the_per_step_draws():
    from facialr1_jax.sampling.samplers import row_uniforms, step_uniforms

    keys = row_keys(jax.random.key(9), 5)
    table = np.asarray(jax.jit(step_uniforms, static_argnums=1)(keys, 7))
    assert table.shape == (5, 7) and np.all((table >= 0) & (table < 1))
    for step in (0, 3, 6):
        np.testing.assert_array_equal(table[:, step], np.asarray(row_uniforms(step_keys(keys, step))))
    # choose_tokens draws the same tokens from the keys or from their uniforms.
    logits = jnp.asarray(np.random.default_rng(3).standard_normal((5, 40)).astype(np.float32))
    for config in (SamplingConfig(temperature=0.8), SamplingConfig(temperature=1.0, top_k=5, top_p=0.9)):
        from_keys = choose_tokens(logits, step_keys(keys, 3), config)
        from_uniforms = choose_tokens(logits, None, config, uniforms=jnp.asarray(table[:, 3]))
        for a, b in zip(from_keys, from_uniforms):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
