"""The training forward that computes each GRPO group's prompt once (`LanguageModel.shared_prompt_forward`,
`shared_prompt_block_attention`) against the plain forward over the prompt repeated G times followed by
each completion: same hidden states, same parameter gradients, with and without rematerialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax import models
from facialr1_jax.models.qwen2_5_vl.layers import grouped_attention
from facialr1_jax.models.qwen2_5_vl.text import LanguageModel, shared_prompt_block_attention


def _case(seed: int, prompts: int, samples: int, prompt_length: int = 9, length: int = 6, hidden: int = 64):
    """Embeddings and masks: prompt i left-padded by i tokens, row r's completion ends after a random length."""
    rng = np.random.default_rng(seed)
    rows = prompts * samples
    prompt_mask = np.arange(prompt_length)[None, :] >= np.arange(prompts)[:, None]
    lengths = rng.integers(1, length + 1, size=rows)
    completion_mask = np.arange(length)[None, :] < lengths[:, None]
    prompt_positions = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0)
    completion_positions = prompt_positions[:, -1:].repeat(samples, axis=0) + 1 + np.arange(length)[None, :]
    three = lambda p: np.repeat(p[None], 3, axis=0).astype(np.int32)
    return dict(
        prompt_embeds=jnp.asarray(rng.standard_normal((prompts, prompt_length, hidden)).astype(np.float32)),
        prompt_positions=jnp.asarray(three(prompt_positions)),
        prompt_mask=jnp.asarray(prompt_mask),
        completion_embeds=jnp.asarray(rng.standard_normal((rows, length, hidden)).astype(np.float32)),
        completion_positions=jnp.asarray(three(completion_positions)),
        completion_mask=jnp.asarray(completion_mask),
    )


def _repeated_forward(model: LanguageModel, case: dict, samples: int):
    """The plain forward over [prompt repeated per sample, completion] rows: (prompt part, completion part)."""
    repeat = lambda x, axis=0: jnp.repeat(x, samples, axis=axis)
    embeds = jnp.concatenate([repeat(case["prompt_embeds"]), case["completion_embeds"]], axis=1)
    positions = jnp.concatenate([repeat(case["prompt_positions"], 1), case["completion_positions"]], axis=2)
    mask = jnp.concatenate([repeat(case["prompt_mask"]), case["completion_mask"]], axis=1)
    hidden, _ = model(embeds, positions, mask)
    prompt_length = case["prompt_embeds"].shape[1]
    return hidden[:, :prompt_length], hidden[:, prompt_length:]


def _language_model(remat: bool = False) -> LanguageModel:
    config = models.get_preset("tiny").text_config
    return LanguageModel(config, remat=remat, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("prompts, samples", [(2, 3), (1, 4), (3, 1)])
def test_block_attention_equals_attention_over_the_repeated_prompt(prompts, samples):
    rng = np.random.default_rng(prompts * 7 + samples)
    rows, kv, per_kv, length, prompt_length, dim = prompts * samples, 2, 3, 5, 7, 8
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    query = normal(rows, kv, per_kv, length, dim)
    prompt_keys, prompt_values = normal(prompts, kv, prompt_length, dim), normal(prompts, kv, prompt_length, dim)
    keys, values = normal(rows, kv, length, dim), normal(rows, kv, length, dim)
    prompt_mask = jnp.asarray(np.arange(prompt_length)[None, :] >= np.arange(prompts)[:, None])
    completion_mask = jnp.asarray(np.arange(length)[None, :] < rng.integers(1, length + 1, size=rows)[:, None])
    got = jax.jit(shared_prompt_block_attention)(query, prompt_keys, prompt_values, prompt_mask, keys, values,
                                                 completion_mask)

    repeat = lambda x: jnp.repeat(x, samples, axis=0)
    all_keys = jnp.concatenate([repeat(prompt_keys), keys], axis=2)
    all_values = jnp.concatenate([repeat(prompt_values), values], axis=2)
    causal = np.tril(np.ones((length, length), bool))
    mask = jnp.concatenate([jnp.broadcast_to(repeat(prompt_mask)[:, None, :], (rows, length, prompt_length)),
                            causal[None] & completion_mask[:, None, :]], axis=2)
    want = grouped_attention(query, all_keys, all_values, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts, samples", [(2, 3), (1, 4)])
def test_shared_prompt_forward_equals_the_forward_over_repeated_prompts(prompts, samples):
    model = _language_model()
    case = _case(seed=prompts + 10 * samples, prompts=prompts, samples=samples)
    prompt_hidden, completion_hidden = nnx.jit(lambda m, c: m.shared_prompt_forward(**c))(model, case)
    want_prompt, want_completion = _repeated_forward(model, case, samples)

    real = np.asarray(case["completion_mask"])
    np.testing.assert_allclose(np.asarray(completion_hidden)[real], np.asarray(want_completion)[real],
                               atol=2e-5, rtol=1e-5)
    real_prompt = np.repeat(np.asarray(case["prompt_mask"]), samples, axis=0)
    np.testing.assert_allclose(np.repeat(np.asarray(prompt_hidden), samples, axis=0)[real_prompt],
                               np.asarray(want_prompt)[real_prompt], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_shared_prompt_forward_gives_the_same_parameter_gradients(remat):
    prompts, samples = 2, 3
    model = _language_model(remat=remat)
    case = _case(seed=5, prompts=prompts, samples=samples)
    rng = np.random.default_rng(0)
    # A loss on the last prompt position (what predicts the first completion token) and on the real
    # completion positions, as the GRPO log-probs read them.
    weights_prompt = jnp.asarray(rng.standard_normal((prompts * samples, 64)).astype(np.float32))
    weights = jnp.asarray(rng.standard_normal(case["completion_embeds"].shape).astype(np.float32))
    mask = case["completion_mask"][..., None]

    def shared_loss(m):
        prompt_hidden, completion_hidden = m.shared_prompt_forward(**case)
        last = jnp.repeat(prompt_hidden[:, -1], samples, axis=0)
        return (last * weights_prompt).sum() + (completion_hidden * weights * mask).sum()

    def repeated_loss(m):
        prompt_hidden, completion_hidden = _repeated_forward(m, case, samples)
        return (prompt_hidden[:, -1] * weights_prompt).sum() + (completion_hidden * weights * mask).sum()

    got = nnx.jit(nnx.grad(shared_loss))(model)
    want = nnx.jit(nnx.grad(repeated_loss))(model)
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves) > 10
    for g, w in zip(got_leaves, want_leaves):
        scale = float(jnp.abs(w).max()) + 1e-12
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=2e-5)


def test_shared_prompt_forward_rejects_rows_that_do_not_split_into_groups():
    model = _language_model()
    case = _case(seed=1, prompts=2, samples=3)
    case["completion_embeds"] = case["completion_embeds"][:5]
    with pytest.raises(ValueError, match="do not split into equal groups"):
        model.shared_prompt_forward(**case)
    case = _case(seed=1, prompts=2, samples=3)
    case["completion_mask"] = case["completion_mask"][:, :4]
    with pytest.raises(ValueError, match="completion_mask must have shape"):
        model.shared_prompt_forward(**case)
