"""Learning-rate schedules and the AdamW configuration built from the optimizer config section."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from facialr1_jax.train import optim


def test_linear_warmup_then_linear_decay_matches_hugging_face_formula():
    lr, warmup, total = 1e-3, 10, 110
    schedule = optim.make_schedule(lr=lr, total_steps=total, warmup_steps=warmup, schedule="linear")
    for step in [0, 1, 5, 9, 10, 11, 60, 109, 110]:
        # transformers.get_linear_schedule_with_warmup's lr_lambda, written out.
        if step < warmup:
            expected = lr * step / warmup
        else:
            expected = lr * max(0.0, (total - step) / (total - warmup))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12), step


def test_cosine_decay_reaches_end_fraction_and_constant_stays():
    cosine = optim.make_schedule(lr=2.0, total_steps=20, warmup_steps=0, schedule="cosine", end_lr_fraction=0.1)
    assert float(cosine(0)) == pytest.approx(2.0)
    assert float(cosine(10)) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(cosine(20)) == pytest.approx(0.2, rel=1e-5)
    constant = optim.make_schedule(lr=0.5, total_steps=20, warmup_steps=4, schedule="constant")
    assert [round(float(constant(s)), 6) for s in (0, 2, 4, 19)] == [0.0, 0.25, 0.5, 0.5]


def test_bad_schedule_values_are_clear_errors():
    with pytest.raises(ValueError, match="'exp' is not one of linear, cosine, constant"):
        optim.make_schedule(lr=1.0, total_steps=5, schedule="exp")
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        optim.make_schedule(lr=1.0, total_steps=0)


def _config(**changes):
    c = ml_collections.ConfigDict(
        dict(lr=0.1, schedule="constant", warmup_steps=0, end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
             weight_decay=0.5, grad_clip=0.0)
    )
    c.update(changes)
    return c


def test_weight_decay_skips_vectors_and_clipping_bounds_the_update():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    tx, _ = optim.make_optimizer(_config(), total_steps=1)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # With zero gradients only decoupled weight decay moves a parameter: -lr * wd * p.
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)

    # eps = 1 makes Adam's first update g / (|g| + 1), which depends on the gradient's scale, so it
    # shows whether the gradient was clipped to global norm 1 first.
    big = {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.full((2,), 100.0)}
    clipped_g = 100.0 / np.sqrt(6 * 100.0**2)
    for grad_clip, g in [(1.0, clipped_g), (0.0, 100.0)]:
        tx, _ = optim.make_optimizer(_config(weight_decay=0.0, grad_clip=grad_clip, eps=1.0), 1)
        updates, _ = tx.update(big, tx.init(params), params)
        np.testing.assert_allclose(updates["kernel"], -0.1 * g / (g + 1.0), rtol=1e-5)


def test_adamw_hyperparameters_reach_optax():
    params = {"kernel": jnp.array([[1.0, -2.0]])}
    grads = {"kernel": jnp.array([[0.3, -0.1]])}
    c = _config(lr=0.01, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.0)
    tx, _ = optim.make_optimizer(c, total_steps=1)
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.array([[0.3, -0.1]])
    m_hat = (1 - 0.8) * g / (1 - 0.8)
    v_hat = (1 - 0.95) * g**2 / (1 - 0.95)
    np.testing.assert_allclose(updates["kernel"], -0.01 * m_hat / (np.sqrt(v_hat) + 1e-3), rtol=1e-5)


def test_vision_lr_scale_freezes_or_shrinks_only_the_vision_tower():
    params = {"visual": {"kernel": jnp.ones((2, 2))}, "language_model": {"kernel": jnp.ones((2, 2))}}
    grads = {"visual": {"kernel": jnp.full((2, 2), 3.0)}, "language_model": {"kernel": jnp.full((2, 2), 0.5)}}

    def step(scale, **overrides):
        c = _config(**overrides)
        c.vision_lr_scale = scale
        tx, _ = optim.make_optimizer(c, total_steps=1)
        return tx.update(grads, tx.init(params), params)[0]

    full, half, frozen = step(1.0), step(0.5), step(0.0)
    np.testing.assert_allclose(half["visual"]["kernel"], 0.5 * np.asarray(full["visual"]["kernel"]), rtol=1e-6)
    np.testing.assert_allclose(half["language_model"]["kernel"], full["language_model"]["kernel"], rtol=1e-6)
    # Frozen: no step at all (not even weight decay), and the clipping norm ignores its gradient, so
    # the language model's update equals the one it gets when the vision gradient is zero.
    np.testing.assert_array_equal(np.asarray(frozen["visual"]["kernel"]), 0.0)
    eps_one = dict(weight_decay=0.0, grad_clip=1.0, eps=1.0)  # Adam's first step g / (|g| + 1) shows the clipping
    clipped = step(0.0, **eps_one)["language_model"]["kernel"]
    g = 0.5 / np.sqrt(4 * 0.5**2)  # the language model's gradient alone clipped to norm 1
    np.testing.assert_allclose(clipped, -0.1 * g / (g + 1.0) * np.ones((2, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="vision_lr_scale"):
        step(-1.0)
