"""GRPO advantages, KL, clipped objective and aggregation against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialr1_jax.train import grpo

ATOL = 1e-6


def test_group_advantages_by_hand():
    rewards = jnp.array([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
    adv = grpo.group_advantages(rewards, num_generations=4)
    # Group 1: mean 3, unbiased std sqrt(((-2)^2 + 1 + 0 + 9) / 3) = sqrt(14/3).
    std = np.sqrt(14.0 / 3.0)
    expected_first = np.array([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4)
    np.testing.assert_allclose(adv[:4], expected_first, atol=ATOL)
    # Group 2: all equal -> zero advantage, no division blow-up thanks to eps.
    np.testing.assert_allclose(adv[4:], 0.0, atol=ATOL)


def test_mean_only_and_batch_scaling():
    rewards = jnp.array([0.0, 2.0, 1.0, 5.0])
    np.testing.assert_allclose(grpo.group_advantages(rewards, 2, scale="mean_only"), [-1, 1, -2, 2], atol=ATOL)
    batch_std = np.std([0.0, 2.0, 1.0, 5.0], ddof=1)
    np.testing.assert_allclose(
        grpo.group_advantages(rewards, 2, scale="batch", eps=0.0), np.array([-1, 1, -2, 2]) / batch_std, atol=ATOL
    )


def test_group_advantages_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="divisible by num_generations=4"):
        grpo.group_advantages(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="scale='median'"):
        grpo.group_advantages(jnp.zeros(4), 2, scale="median")


def test_kl_estimators_by_hand():
    logp = jnp.array([-1.0, -2.0, -0.5])
    ref = jnp.array([-1.5, -2.0, -0.1])
    delta = np.array([-0.5, 0.0, 0.4])
    np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k3"), np.exp(delta) - delta - 1, atol=ATOL)
    np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k1"), [0.5, 0.0, -0.4], atol=ATOL)
    assert float(grpo.kl_penalty(logp, ref, "k3").min()) >= 0.0


def test_clipped_objective_by_hand():
    old = jnp.zeros((1, 4))
    # Ratios 1.5, 0.5, 1.1, 0.9 with positive then negative advantage.
    logp = jnp.log(jnp.array([[1.5, 0.5, 1.1, 0.9]]))
    pos = grpo.clipped_objective(logp, old, jnp.array([2.0]), 0.2, 0.2)
    # A > 0: min(rho A, clip(rho) A) -> 1.2*2, 0.5*2, 1.1*2, 0.9*2.
    np.testing.assert_allclose(pos, -np.array([[2.4, 1.0, 2.2, 1.8]]), atol=1e-5)
    neg = grpo.clipped_objective(logp, old, jnp.array([-1.0]), 0.2, 0.28)
    # A < 0: min(-rho, -clip(rho)) = -max(rho, clip(rho)) -> 1.5, 0.8, 1.1, 0.9.
    np.testing.assert_allclose(neg, np.array([[1.5, 0.8, 1.1, 0.9]]), atol=1e-5)


def test_aggregation_modes_by_hand():
    loss = jnp.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    s, d = grpo.aggregate(loss, mask, "seq_mean_token_mean")
    np.testing.assert_allclose(float(s / d), (2.0 + 4.0) / 2, atol=ATOL)
    s, d = grpo.aggregate(loss, mask, "token_mean")
    np.testing.assert_allclose(float(s / d), (1 + 2 + 3 + 4) / 4, atol=ATOL)
    s, d = grpo.aggregate(loss, mask, "seq_mean_token_sum_norm")
    np.testing.assert_allclose(float(s / d), (6.0 / 4 + 4.0 / 4) / 2, atol=ATOL)
    s, d = grpo.aggregate(loss, mask, "seq_mean_token_sum_norm", max_length=8)
    np.testing.assert_allclose(float(s / d), (6.0 / 8 + 4.0 / 8) / 2, atol=ATOL)


def test_sequence_ratio_value_and_gradient():
    logp = jnp.array([[-1.0, -2.0, -3.0]])
    old = jnp.array([[-1.2, -2.0, -2.5]])
    mask = jnp.array([[1, 1, 0]])
    value = grpo.sequence_log_ratio(logp, old, mask)
    np.testing.assert_allclose(value[0, :2], [0.1, 0.1], atol=ATOL)
    grad = jax.grad(lambda lp: (grpo.sequence_log_ratio(lp, old, mask) * jnp.array([[1.0, 2.0, 0.0]])).sum())(logp)
    np.testing.assert_allclose(grad, [[1.0, 2.0, 0.0]], atol=ATOL)


def test_full_loss_on_policy_equals_minus_advantage_plus_kl():
    """mu = 1: rho = 1 in value, so the policy term is -A per token; with beta the mean k3 is added."""
    key = jax.random.PRNGKey(0)
    logp = -jax.random.uniform(key, (4, 5))
    ref = logp + 0.1
    adv = jnp.array([1.0, -1.0, 0.5, 0.0])
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    terms = grpo.grpo_loss_terms(logp, logp, ref, adv, mask, beta=0.04)
    k3 = float(np.exp(0.1) - 0.1 - 1)
    np.testing.assert_allclose(float(terms.loss_sum / terms.denominator), -adv.mean() + 0.04 * k3, atol=1e-5)
    np.testing.assert_allclose(float(terms.kl_sum / terms.denominator), k3, atol=1e-5)
    assert float(terms.clip_fraction_sum) == 0.0
    # The gradient of the on-policy loss is -A/|o_i| per token of completion i (seq-mean-token-mean).
    grad = jax.grad(lambda lp: grpo.grpo_loss_terms(lp, logp, None, adv, mask, beta=0.0).loss_sum / 4)(logp)
    lengths = mask.sum(axis=1)
    np.testing.assert_allclose(grad, -(adv / lengths / 4)[:, None] * mask, atol=1e-6)


def test_beta_needs_reference():
    with pytest.raises(ValueError, match="reference log-probs"):
        grpo.grpo_loss_terms(jnp.zeros((1, 2)), jnp.zeros((1, 2)), None, jnp.ones(1), jnp.ones((1, 2)), beta=0.1)


def test_micro_batches_sum_to_full_batch():
    """(sum, denominator) pairs add up across micro-batches to the full-batch loss and gradient."""
    key = jax.random.PRNGKey(1)
    logp = -jax.random.uniform(key, (8, 6))
    old = logp + 0.05 * jax.random.normal(jax.random.PRNGKey(2), (8, 6))
    ref = logp - 0.1
    adv = jax.random.normal(jax.random.PRNGKey(3), (8,))
    mask = (jnp.arange(6)[None, :] < jnp.array([6, 5, 4, 3, 2, 1, 6, 3])[:, None]).astype(jnp.float32)

    for aggregation in grpo.AGGREGATIONS:
        def loss_full(lp):
            t = grpo.grpo_loss_terms(lp, old, ref, adv, mask, aggregation=aggregation)
            return t.loss_sum / t.denominator

        full_loss, full_grad = jax.value_and_grad(loss_full)(logp)
        total_den = 0.0
        sums, grads = [], []
        for i in range(4):
            sl = slice(2 * i, 2 * i + 2)

            def loss_sum(lp):
                return grpo.grpo_loss_terms(lp, old[sl], ref[sl], adv[sl], mask[sl], aggregation=aggregation).loss_sum

            s, g = jax.value_and_grad(loss_sum)(logp[sl])
            den = grpo.grpo_loss_terms(logp[sl], old[sl], ref[sl], adv[sl], mask[sl], aggregation=aggregation).denominator
            sums.append(s)
            grads.append(g)
            total_den += float(den)
        np.testing.assert_allclose(float(sum(sums)) / total_den, float(full_loss), rtol=1e-6)
        np.testing.assert_allclose(np.concatenate(grads) / total_den, full_grad, rtol=1e-5, atol=1e-9)
