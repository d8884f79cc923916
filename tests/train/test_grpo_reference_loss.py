"""grpo.loss_variant = "facial_r1_code" (docs/METHOD.md 7.6): the authors' per-reward-function loss,
checked against numbers worked out by hand, its think mask, its batch inputs and its config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo as grpo_config
from facialr1_jax import config_validation
from facialr1_jax.data import batching
from facialr1_jax.train import grpo, grpo_loop, state as state_lib, step as step_lib
from facialr1_jax.train.grpo_batch import reference_think_token_mask, training_batch

from tests.train.test_grpo_batch import _FakeByteTable, _prompt_examples, tiny  # noqa: F401 (fixture)


def _terms(logp, old, ref, adv, mask, think, weights, **kw):
    kw.setdefault("num_full_terms", 2)
    kw.setdefault("num_think_terms", 1)
    return grpo.reward_function_loss_terms(jnp.asarray(logp), jnp.asarray(old), ref, jnp.asarray(adv),
                                           jnp.asarray(mask), jnp.asarray(think), jnp.asarray(weights), **kw)


def test_golden_value_with_clipping_think_mask_and_weights():
    """Two completions, three reward functions (accuracy and format on every token, AU on think tokens).

    Row 0, A = 2, ratios 1.5, 1.0, 0.5 (a fourth token masked out), think tokens 1 and 2:
      per token -min(rho A, clip(rho, 0.8, 1.2) A) = -2.4, -2.0, -1.0
      all tokens: (-2.4 - 2.0 - 1.0) / 3 = -1.8; think tokens: (-2.0 - 1.0) / 2 = -1.5
      L_0 = (2 * -1.8 + -1.5) / 3 = -1.7
    Row 1, A = -1, ratios 0.5, 1.3, no think block:
      per token max(rho, clip(rho)) = 0.8, 1.3; all tokens: 1.05; think tokens: none -> 0
      L_1 = (2 * 1.05 + 0) / 3 = 0.7
    weights 0.5 and 2: loss = (0.5 * -1.7 + 2 * 0.7) / 2 = 0.275
    """
    old = np.zeros((2, 4), np.float32)
    logp = np.log(np.array([[1.5, 1.0, 0.5, 1.1], [0.5, 1.3, 1.0, 1.0]], np.float32))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    think = np.array([[0, 1, 1, 1], [0, 0, 0, 0]], np.float32)  # the masked-out fourth token never counts
    terms = _terms(logp, old, None, [2.0, -1.0], mask, think, [0.5, 2.0], beta=0.0)
    assert float(terms.denominator) == 2.0
    np.testing.assert_allclose(float(terms.loss_sum), 2 * 0.275, atol=1e-6)
    np.testing.assert_allclose(float(terms.loss_sum / terms.denominator), 0.275, atol=1e-6)
    # Clipped tokens per completion over its tokens: row 0 has 1.5 and 0.5 of 3, row 1 has 0.5 and 1.3 of 2.
    np.testing.assert_allclose(float(terms.clip_fraction_sum), 2 / 3 + 1.0, atol=1e-6)
    # Weights 1 everywhere: (-1.7 + 0.7) / 2 = -0.5.
    ones = _terms(logp, old, None, [2.0, -1.0], mask, think, [1.0, 1.0], beta=0.0)
    np.testing.assert_allclose(float(ones.loss_sum / ones.denominator), -0.5, atol=1e-6)
    # Without the AU function (au_weight = 0) only the all-token mean is left: (-1.8 + 1.05) / 2.
    no_au = _terms(logp, old, None, [2.0, -1.0], mask, think, [1.0, 1.0], beta=0.0, num_full_terms=2,
                   num_think_terms=0)
    np.testing.assert_allclose(float(no_au.loss_sum / no_au.denominator), -0.375, atol=1e-6)


def test_golden_value_and_gradient_on_policy_with_kl():
    """mu = 1 (rho = 1): each token's loss is -A + beta k3, with ref - logp = 0.1 everywhere,
    k3 = e^0.1 - 1.1. Row 0 (A = 2, think tokens present): L_0 = -2 + beta k3 in every function.
    Row 1 (A = -1, no think block): L_1 = 2/3 (1 + beta k3). The gradient of the weighted sum on token t
    of row i is -A_i w_i / K (n_full m_t / |m| + n_think m_t think_t / |m think|)."""
    beta = 0.04
    k3 = np.exp(0.1) - 1.1
    logp = -np.array([[0.5, 1.0, 1.5, 2.0], [0.3, 0.6, 0.9, 1.2]], np.float32)
    ref = jnp.asarray(logp + 0.1)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    think = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    adv, weights = np.array([2.0, -1.0], np.float32), np.array([0.5, 2.0], np.float32)
    terms = _terms(logp, logp, ref, adv, mask, think, weights, beta=beta)
    expected = (0.5 * (-2 + beta * k3) + 2.0 * (2 / 3) * (1 + beta * k3)) / 2
    np.testing.assert_allclose(float(terms.loss_sum / terms.denominator), expected, rtol=1e-5)
    np.testing.assert_allclose(float(terms.kl_sum / terms.denominator), k3, rtol=1e-4)

    def weighted_sum(lp):
        return grpo.reward_function_loss_terms(lp, jax.lax.stop_gradient(lp), None, jnp.asarray(adv),
                                               jnp.asarray(mask), jnp.asarray(think), jnp.asarray(weights),
                                               num_full_terms=2, num_think_terms=1, beta=0.0).loss_sum

    grad = np.asarray(jax.grad(weighted_sum)(jnp.asarray(logp)))
    # Row 0: -2 * 0.5 / 3 * (2 / 4 + 1 / 2) on think tokens, -2 * 0.5 / 3 * (2 / 4) on the others.
    np.testing.assert_allclose(grad[0], [-1 / 6, -1 / 3, -1 / 3, -1 / 6], rtol=1e-5)
    # Row 1: 1 * 2 / 3 * (2 / 3) on its three tokens, nothing on the masked one.
    np.testing.assert_allclose(grad[1], [4 / 9, 4 / 9, 4 / 9, 0.0], rtol=1e-5, atol=1e-7)


def test_think_mask_equal_to_the_completion_mask_gives_the_standard_loss():
    """With every function on every token and weights 1, the variant is seq_mean_token_mean."""
    key = jax.random.PRNGKey(4)
    logp = -jax.random.uniform(key, (6, 5))
    old = logp + 0.1 * jax.random.normal(jax.random.PRNGKey(5), (6, 5))
    ref = logp - 0.05
    adv = jax.random.normal(jax.random.PRNGKey(6), (6,))
    mask = (jnp.arange(5)[None, :] < jnp.array([5, 4, 3, 2, 1, 5])[:, None]).astype(jnp.float32)
    variant = grpo.reward_function_loss_terms(logp, old, ref, adv, mask, mask, jnp.ones(6), num_full_terms=2,
                                              num_think_terms=1, beta=0.04)
    standard = grpo.grpo_loss_terms(logp, old, ref, adv, mask, beta=0.04)
    for a, b in zip(variant, standard):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_micro_batches_sum_to_the_full_batch():
    key = jax.random.PRNGKey(7)
    logp = -jax.random.uniform(key, (8, 6))
    old = logp + 0.05 * jax.random.normal(jax.random.PRNGKey(8), (8, 6))
    adv = jax.random.normal(jax.random.PRNGKey(9), (8,))
    mask = (jnp.arange(6)[None, :] < jnp.array([6, 5, 4, 3, 2, 1, 6, 3])[:, None]).astype(jnp.float32)
    think = mask * (jnp.arange(6)[None, :] % 2)
    weights = jnp.linspace(0.0, 1.0, 8)

    def loss(lp, sl):
        t = grpo.reward_function_loss_terms(lp, old[sl], None, adv[sl], mask[sl], think[sl], weights[sl],
                                            num_full_terms=2, num_think_terms=1, beta=0.0)
        return t.loss_sum, t.denominator

    full_sum, full_den = loss(logp, slice(None))
    parts = [loss(logp[2 * i: 2 * i + 2], slice(2 * i, 2 * i + 2)) for i in range(4)]
    np.testing.assert_allclose(float(sum(s for s, _ in parts)), float(full_sum), rtol=1e-6)
    assert float(sum(d for _, d in parts)) == float(full_den) == 8.0


def test_needs_a_reward_function_and_a_reference_for_kl():
    z = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="at least one reward function"):
        grpo.reward_function_loss_terms(z, z, None, jnp.ones(1), z + 1, z, jnp.ones(1), num_full_terms=0,
                                        num_think_terms=0)
    with pytest.raises(ValueError, match="reference log-probs"):
        grpo.reward_function_loss_terms(z, z, None, jnp.ones(1), z + 1, z, jnp.ones(1), num_full_terms=2,
                                        num_think_terms=1, beta=0.1)


def test_reference_think_mask_marks_the_content_between_paired_tags():
    table = _FakeByteTable([b"<think>", b"brows", b" up", b"</think>", b"<answer>", b"joy", b"</answer>", b"",
                            b"<th", b"ink>", b"</THINK>", b"a</think>"])
    tokens = np.array([
        [0, 1, 2, 3, 4, 5, 6, 7],      # one block: its two content tokens, tags excluded
        [8, 9, 1, 2, 3, 0, 5, 3],      # an opening split over two tokens; a second pair is marked too
        [0, 1, 10, 2, 4, 5, 6, 7],     # </THINK> is no closing tag (case-sensitive, as token ids are)
        [0, 1, 11, 1, 3, 7, 7, 7],     # "a</think>" straddles the end: not marked; later pairs follow order
        [0, 1, 2, 3, 4, 5, 6, 7],      # masked-out tokens contribute no bytes
    ])
    mask = np.ones(tokens.shape, np.float32)
    mask[4, 3:] = 0
    out = reference_think_token_mask(table, tokens, mask)
    np.testing.assert_array_equal(out[0], [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1], [0, 0, 1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(out[2], 0)
    # Openings at 0, closings in token 2 and token 4: pair 1 = token 1 (token 2 straddles), no second opening.
    np.testing.assert_array_equal(out[3], [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[4], 0)


def test_reward_functions_counts_the_terms_with_a_weight():
    config = grpo_config.get_config("demo")
    assert grpo_loop.reward_functions(config) == (2, 1)  # accuracy and format on all tokens, AU on think
    with config.unlocked():
        config.rewards.au_weight = 0.0
        config.rewards.length_weight = 0.5
    assert grpo_loop.reward_functions(config) == (3, 0)
    with config.unlocked():
        config.grpo.loss_variant = "facial_r1_code"
    settings = grpo_loop._loss_settings(config)
    assert settings["variant"] == "facial_r1_code"
    assert (settings["num_full_terms"], settings["num_think_terms"]) == (3, 0)
    assert "aggregation" not in settings


def test_the_loss_on_a_model_reads_think_mask_and_weights_in_both_layouts(tiny):  # noqa: F811
    """On-policy the loss is -(1/N) sum_i w_i A_i (n_full + n_think [row i has think tokens]) / K."""
    config, model = tiny
    examples = _prompt_examples(config)[:2]
    pad = config.text_config.pad_token_id
    collated = batching.collate_prompts(examples, config, pad_id=pad, max_length=64)
    rng = np.random.default_rng(1)
    tokens = rng.integers(20, config.text_config.vocab_size, (8, 6)).astype(np.int32)
    mask = (np.arange(6)[None, :] < rng.integers(2, 7, (8, 1))).astype(np.float32)
    think = mask * (np.arange(6)[None, :] >= 1)
    think[::3] = 0  # rows 0, 3, 6 have no think block
    advantages = rng.standard_normal(8).astype(np.float32)
    weights = np.repeat(np.array([0.25, 1.5], np.float32), 4)
    model_def, params = state_lib.split_model(model)
    settings = dict(variant="facial_r1_code", eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3",
                    num_full_terms=2, num_think_terms=1)
    loss_fn = grpo_loop.make_grpo_loss(settings, use_stored_old_log_probs=False)
    has_think = think.sum(axis=1) > 0
    expected = -(weights * advantages * (2 + has_think) / 3).mean()
    results = []
    for num_micro in (1, 4):  # shared-prompt layout, then one full sequence per row
        batch = training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                               tokens, mask, advantages, num_generations=4, num_micro_batches=num_micro,
                               model_config=config, pad_id=pad, think_mask=think, sample_weights=weights)
        assert batch["sample_weights"].shape == (num_micro, 8 // num_micro)
        assert batch["think_mask"].shape == (num_micro, 8 // num_micro, 6)
        batch = jax.tree.map(jnp.asarray, batch)
        grads, loss_sum, denominator, _ = step_lib.accumulate(model_def, loss_fn, params, batch,
                                                             jax.random.PRNGKey(0), with_grads=True)
        np.testing.assert_allclose(float(loss_sum / denominator), expected, rtol=1e-5)
        results.append(jax.tree.map(lambda g: g / denominator, grads))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"sample_weights has shape \(4,\), expected \(8,\)"):
        training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                       tokens, mask, advantages, num_generations=4, num_micro_batches=1, model_config=config,
                       pad_id=pad, think_mask=think, sample_weights=weights[:4])


@pytest.mark.parametrize("key,value,named", [
    ("grpo.ratio_level", "sequence", "grpo.ratio_level = 'sequence' (needs 'token')"),
    ("grpo.aggregation", "token_mean", "grpo.aggregation = 'token_mean' (needs 'seq_mean_token_mean')"),
    ("grpo.au_think_only", True, "grpo.au_think_only = True (needs False"),
])
def test_validation_rejects_knobs_that_change_the_reference_objective(key, value, named):
    config = grpo_config.get_config("demo")
    with config.unlocked():
        config.grpo.loss_variant = "facial_r1_code"
    config_validation.validate(config)
    section, name = key.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(config_validation.ConfigError, match="loss_variant = 'facial_r1_code'") as caught:
        config_validation.validate(config)
    assert named in str(caught.value)


def test_validation_of_the_variant_name_and_reward_weights():
    config = grpo_config.get_config("demo")
    assert config.grpo.loss_variant == "standard"
    with config.unlocked():
        config.grpo.loss_variant = "reference"
    with pytest.raises(config_validation.ConfigError, match="is not one of standard, facial_r1_code"):
        config_validation.validate(config)
    with config.unlocked():
        config.grpo.loss_variant = "facial_r1_code"
        for term in ("format", "accuracy", "au"):
            config.rewards[f"{term}_weight"] = 0.0
    with pytest.raises(config_validation.ConfigError, match=r"every config.rewards.\*_weight = 0"):
        config_validation.validate(config)


@pytest.mark.slow
def test_a_grpo_run_with_the_reference_loss_carries_each_records_weight(tmp_path, monkeypatch):
    """run_grpo with loss_variant = "facial_r1_code": every row's sample weight is its record's `weights`
    (set here on the built-in records, which carry the default 1), the think mask is the reference one,
    and the run completes with finite losses."""
    import dataclasses

    from tests.train.test_grpo_run import _small_config, _train_rows

    config = _small_config(str(tmp_path / "demo"), 2)
    config.grpo.loss_variant = "facial_r1_code"
    config_validation.validate(config)
    weight_of = {}

    def weighted_prompt(record, *args, **kwargs):
        weight_of[record.id] = 0.25 + (len(weight_of) % 3)  # 0.25, 1.25, 2.25, ...
        return encode(record.replace(weights=weight_of[record.id]), *args, **kwargs)

    encode = grpo_loop.encode_prompt_example
    seen = []

    def recording_batch(*args, **kwargs):
        seen.append((kwargs.get("think_mask"), kwargs.get("sample_weights"), args[3], args[4]))
        return training_batch(*args, **kwargs)

    monkeypatch.setattr(grpo_loop, "encode_prompt_example", weighted_prompt)
    monkeypatch.setattr(grpo_loop, "training_batch", recording_batch)
    result = grpo_loop.run_grpo(config, str(tmp_path / "run"))
    assert result["status"] == "completed" and result["step"] == 2
    assert len(seen) == 2
    for think, weights, tokens, mask in seen:
        assert think is not None and think.shape == tokens.shape
        assert not (think > mask).any()  # only completion tokens
        assert weights.shape == (tokens.shape[0],)
        assert set(np.round(weights, 2)) <= {0.25, 1.25, 2.25}
        np.testing.assert_array_equal(weights.reshape(-1, 3), weights.reshape(-1, 3)[:, :1].repeat(3, axis=1))
    assert all(np.isfinite(row["loss"]) for row in _train_rows(str(tmp_path / "run")))


def test_the_planners_grpo_batch_carries_the_reference_loss_inputs(tiny):  # noqa: F811
    from facialr1_jax.parallel.planning import ExampleShape, synthetic_grpo_batch

    config, _ = tiny
    shape = ExampleShape(sequence_tokens=16, target_tokens=0, image_grid=(1, 4, 4))
    kwargs = dict(num_prompts=2, num_generations=2, completion_tokens=4, num_micro_batches=2,
                  with_old_log_probs=False, with_ref_log_probs=False)
    _, plain = synthetic_grpo_batch(config, shape, **kwargs)
    assert "think_mask" not in plain and "sample_weights" not in plain
    _, batch = synthetic_grpo_batch(config, shape, reference_loss_inputs=True, **kwargs)
    assert batch["think_mask"].shape == batch["completion_mask"].shape
    assert not (batch["think_mask"] > batch["completion_mask"]).any()
    np.testing.assert_array_equal(batch["sample_weights"], np.ones((2, 2)))


def test_the_planner_compiles_the_reference_loss_at_the_reference_pixel_cap():
    """plan_grpo with loss_variant = "facial_r1_code" (the update reads the think mask and weights) and
    the 12,845,056-pixel cap: the planned image is the largest a 32-token prompt holds (10 x 10 patches,
    25 merged tokens), not the cap's 256 x 256."""
    import json

    from facialr1_jax.parallel import make_mesh, planning

    c = grpo_config.get_config("demo")
    c.model.preset, c.model.checkpoint = "tiny", ""
    c.model.preset_overrides = json.dumps({"text_config": {"num_hidden_layers": 1}, "vision_config": {"depth": 2}})
    c.data.max_prompt_tokens, c.data.min_pixels, c.data.max_pixels = 32, 56 * 56, 12845056
    c.grpo.prompts_per_step, c.grpo.num_generations, c.grpo.max_new_tokens = 2, 2, 8
    c.grpo.loss_variant = "facial_r1_code"
    plan = planning.plan_grpo(c, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    assert [p.name for p in plan.programs] == ["rollout_prefill", "rollout_decode", "policy_log_probs", "grpo_step"]
    assert plan.shapes["image_grid"] == [1, 10, 10]
