"""GRPO training batches: prompt order, think masks, and log-probs that match the sampler exactly."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facialr1_jax.data import batching
from facialr1_jax.data.examples import PromptExample
from facialr1_jax.models import get_preset, init_model
from facialr1_jax.parallel import make_mesh
from facialr1_jax.sampling import Engine
from facialr1_jax.train import forward, grpo_loop, state as state_lib, step as step_lib
from facialr1_jax.train.grpo_batch import PromptCycler, think_token_mask, training_batch

_spec = importlib.util.spec_from_file_location(
    "engine_prompts", os.path.join(os.path.dirname(__file__), "..", "sampling", "prompts.py"))
engine_prompts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(engine_prompts)


def test_prompt_cycler_covers_every_record_once_per_epoch_and_resumes():
    cycler = PromptCycler(10, seed=7)
    first_epoch = cycler.take(4) + cycler.take(4) + cycler.take(2)
    assert sorted(first_epoch) == list(range(10))
    saved = cycler.get_state()
    continued = cycler.take(7)
    resumed = PromptCycler(10, seed=7)
    resumed.set_state(saved)
    assert resumed.take(7) == continued
    assert sorted(PromptCycler(10, seed=7).take(15)[10:] + continued[5:]) != []  # wraps across epochs
    with pytest.raises(ValueError, match="checkpointed prompt order is for 10 records"):
        PromptCycler(11, seed=7).set_state(saved)


class _FakeByteTable:
    def __init__(self, pieces):
        self.pieces = pieces

    def bytes_of(self, token_id):
        return self.pieces[token_id]


def test_think_token_mask_marks_tokens_overlapping_the_first_think_block():
    table = _FakeByteTable([b"<think>", b"brows", b" up", b"</THINK>", b"<answer>", b"joy", b"</answer>", b"", b"x<th",
                            b"ink>a</think>"])
    tokens = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 1, 4, 5, 6, 7, 7], [1, 2, 4, 5, 6, 7, 7, 7]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
    out = think_token_mask(table, tokens, mask)
    np.testing.assert_array_equal(out[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[1], [1, 1, 0, 0, 0, 0, 0, 0])  # the tag spans two tokens
    np.testing.assert_array_equal(out[2], 0)  # no think block


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    return config, init_model(config, seed=5)


def _prompt_examples(config):
    return [PromptExample(id=f"p{i}", input_ids=np.asarray(ids, np.int32), pixel_values=pixels,
                          image_grid_thw=grid, record=None, instruction="")
            for i, (ids, pixels, grid) in enumerate(engine_prompts.image_prompts(config))]


def test_training_forward_recomputes_the_sampler_log_probs(tiny):
    """The batch layout (left-padded prompt ++ completion, decode positions) is what the engine used."""
    config, model = tiny
    examples = _prompt_examples(config)
    pad = config.text_config.pad_token_id
    collated = batching.collate_prompts(examples, config, pad_id=pad, max_length=64)
    model_def, params = state_lib.split_model(model)
    engine = Engine(model_def.graphdef, config)
    out = engine.generate((params, model_def.frozen), collated, max_new_tokens=12, num_samples=2,
                          temperature=1.0, rng=jax.random.PRNGKey(1))
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    assert mask.sum() > 0
    batch = training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                           tokens, mask, np.zeros(tokens.shape[0]), num_generations=2, num_micro_batches=3,
                           model_config=config, pad_id=pad)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    shardings = jax.tree.map(lambda x: x.sharding, params)
    log_prob_fn = grpo_loop.make_log_prob_fn(model_def, shardings, mesh, tokens.shape[1])
    assert "prompt_ids" in batch  # 2 rows per micro-batch = whole groups: the shared-prompt layout
    recomputed = np.asarray(log_prob_fn(params, batch)).reshape(tokens.shape)
    np.testing.assert_allclose(recomputed * mask, np.asarray(out.policy_log_probs) * mask, atol=1e-4)
    # The full-sequence layout (each row prompt ++ completion) gives the same log-probs.
    full = training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                          tokens, mask, np.zeros(tokens.shape[0]), num_generations=2, num_micro_batches=3,
                          model_config=config, pad_id=pad, share_prompts=False)
    assert "prompt_ids" not in full and full["input_ids"].shape[-1] == collated["input_ids"].shape[1] + tokens.shape[1]
    recomputed_full = np.asarray(log_prob_fn(params, full)).reshape(tokens.shape)
    np.testing.assert_allclose(recomputed_full * mask, recomputed * mask, atol=1e-5)
    # Projecting only the completion's positions gives the same values as projecting every position
    # and slicing (what the loss and the reference log-probs did before).
    first_micro = jax.tree.map(lambda x: x[0], full)
    model_now = model_def.merge(params)
    every_position = forward.target_log_probs(model_now, first_micro)
    prompt_length = first_micro["input_ids"].shape[1] - tokens.shape[1]
    sliced = np.asarray(every_position)[:, prompt_length - 1 : prompt_length - 1 + tokens.shape[1]]
    only_completion = np.asarray(forward.completion_log_probs(model_now, first_micro, tokens.shape[1]))
    np.testing.assert_allclose(only_completion, sliced, atol=1e-5)


def test_grpo_loss_micro_batches_match_one_batch(tiny):
    config, model = tiny
    examples = _prompt_examples(config)[:2]
    pad = config.text_config.pad_token_id
    collated = batching.collate_prompts(examples, config, pad_id=pad, max_length=64)
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, config.text_config.vocab_size, (8, 6)).astype(np.int32)
    mask = (np.arange(6)[None, :] < rng.integers(1, 7, (8, 1))).astype(np.float32)
    advantages = rng.standard_normal(8).astype(np.float32)
    model_def, params = state_lib.split_model(model)
    settings = dict(eps_low=0.2, eps_high=0.28, beta=0.0, kl_estimator="k3", aggregation="seq_mean_token_mean",
                    ratio_level="token", max_length=6)
    loss_fn = grpo_loop.make_grpo_loss(settings, use_stored_old_log_probs=False)
    results = []
    # 1 micro-batch of 8 rows holds whole groups (the shared-prompt layout); 4 of 2 rows split each
    # group of 4 (one full sequence per row): the two layouts must agree too.
    for num_micro in (1, 4):
        batch = training_batch(collated, [e.pixel_values for e in examples], [e.image_grid_thw for e in examples],
                               tokens, mask, advantages, num_generations=4, num_micro_batches=num_micro,
                               model_config=config, pad_id=pad)
        assert ("prompt_ids" in batch) == (num_micro == 1)
        batch = jax.tree.map(jnp.asarray, batch)
        grads, loss_sum, denominator, _ = step_lib.accumulate(model_def, loss_fn, params, batch,
                                                             jax.random.PRNGKey(0), with_grads=True)
        results.append((float(loss_sum / denominator), jax.tree.map(lambda g: g / denominator, grads)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    # On-policy (mu = 1) the loss value is -mean(A) over completions.
    np.testing.assert_allclose(results[0][0], -advantages.mean(), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
