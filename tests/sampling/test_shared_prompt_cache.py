"""Cascade (shared-prompt) attention and the decode cache that stores each prompt once.

`shared_prompt_attention` against plain `grouped_attention` over the prompt repeated G times followed by
each row's completion; `LanguageModel.decode_step` against the cached forward over such a repeated
cache; the engine's decode state holding one prompt-cache row per prompt, split over the batch mesh
axes; clear errors for mismatched shapes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.models import KVCache, decode_position_ids
from facialr1_jax.models.qwen2_5_vl.layers import grouped_attention
from facialr1_jax.models.qwen2_5_vl.text import SharedPromptCache, shared_prompt_attention, shared_prompt_cache
from facialr1_jax.parallel import SAMPLING_RULES, make_mesh
from facialr1_jax.sampling import Engine
from tests.sampling.prompts import image_prompts, prompt_batch


def _random_case(seed: int, prompts: int, samples: int, kv_heads=2, per_kv=3, dim=8, prompt_length=7,
                 completion_length=5, written=3):
    """Random queries / keys / values; prompt i is left-padded by i tokens, `written` completion slots used."""
    rng = np.random.default_rng(seed)
    rows = prompts * samples
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    prompt_mask = np.arange(prompt_length)[None, :] >= np.arange(prompts)[:, None]
    completion_mask = np.broadcast_to(np.arange(completion_length) < written, (rows, completion_length))
    return dict(query=normal(rows, kv_heads, per_kv, dim),
                prompt_keys=normal(prompts, kv_heads, prompt_length, dim),
                prompt_values=normal(prompts, kv_heads, prompt_length, dim),
                prompt_mask=jnp.asarray(prompt_mask),
                completion_keys=normal(rows, kv_heads, completion_length, dim),
                completion_values=normal(rows, kv_heads, completion_length, dim),
                completion_mask=jnp.asarray(completion_mask))


def _plain_attention(case, samples):
    """grouped_attention over [prompt repeated per sample, completion]: what a repeated cache computes."""
    repeat = lambda x: jnp.repeat(x, samples, axis=0)
    keys = jnp.concatenate([repeat(case["prompt_keys"]), case["completion_keys"]], axis=2)
    values = jnp.concatenate([repeat(case["prompt_values"]), case["completion_values"]], axis=2)
    mask = jnp.concatenate([repeat(case["prompt_mask"]), case["completion_mask"]], axis=1)
    out = grouped_attention(case["query"][:, :, :, None, :], keys, values, mask[:, None, :])
    return out[:, :, :, 0, :]


@pytest.mark.parametrize("dim_major_keys", [False, True])
@pytest.mark.parametrize("prompts, samples", [(3, 4), (2, 1), (1, 8)])
def test_cascade_attention_equals_attention_over_the_repeated_cache(prompts, samples, dim_major_keys):
    # dim_major_keys: the keys as a SharedPromptCache stores them, (rows, kv_heads, head_dim, slots).
    case = _random_case(seed=prompts * 10 + samples, prompts=prompts, samples=samples)
    stored = dict(case)
    if dim_major_keys:
        for name in ("prompt_keys", "completion_keys"):
            stored[name] = jnp.swapaxes(case[name], 2, 3)
    got = jax.jit(partial(shared_prompt_attention, dim_major_keys=dim_major_keys))(**stored)
    np.testing.assert_allclose(np.asarray(got), np.asarray(_plain_attention(case, samples)), atol=1e-5, rtol=1e-5)


def test_cascade_attention_checks_the_dim_major_key_shapes():
    case = _random_case(seed=2, prompts=2, samples=2)
    with pytest.raises(ValueError, match="prompt keys/values must be"):  # keys not transposed
        shared_prompt_attention(**case, dim_major_keys=True)
    case["prompt_keys"] = jnp.swapaxes(case["prompt_keys"], 2, 3)
    with pytest.raises(ValueError, match="completion keys/values must be"):
        shared_prompt_attention(**case, dim_major_keys=True)


def test_cascade_attention_is_stable_for_large_scores():
    # Scores in the hundreds overflow exp() unless both parts are shifted by the common maximum; the
    # prompt part holds the largest scores here, so shifting by the completion's maximum alone would not do.
    case = _random_case(seed=11, prompts=2, samples=3)
    case["query"] = case["query"] * 40.0
    case["prompt_keys"] = case["prompt_keys"] * 20.0
    got = np.asarray(jax.jit(shared_prompt_attention)(**case))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.asarray(_plain_attention(case, 3)), atol=1e-5, rtol=1e-5)


def test_cascade_attention_ignores_padding_and_unwritten_slots():
    # Garbage in the masked slots (padding, completion slots not written yet) must not change the result.
    case = _random_case(seed=7, prompts=2, samples=3)
    baseline = np.asarray(shared_prompt_attention(**case))
    prompt_pad = ~np.asarray(case["prompt_mask"])[:, None, :, None]
    unwritten = ~np.asarray(case["completion_mask"])[:, None, :, None]
    noisy = dict(case)
    for name, hidden in (("prompt_keys", prompt_pad), ("prompt_values", prompt_pad),
                         ("completion_keys", unwritten), ("completion_values", unwritten)):
        noisy[name] = jnp.where(hidden, 1e3, case[name])
    np.testing.assert_allclose(np.asarray(shared_prompt_attention(**noisy)), baseline, atol=1e-6, rtol=1e-6)


def test_cascade_attention_with_an_all_padding_prompt_attends_the_completion_only():
    # A filler prompt row can be all padding: the completion part (at least the token being decoded)
    # then carries the whole softmax, and nothing turns into NaN.
    case = _random_case(seed=3, prompts=2, samples=2)
    case["prompt_mask"] = case["prompt_mask"].at[1].set(False)
    got = np.asarray(shared_prompt_attention(**case))
    assert np.all(np.isfinite(got))
    completion_only = grouped_attention(case["query"][2:, :, :, None, :], case["completion_keys"][2:],
                                        case["completion_values"][2:], case["completion_mask"][2:, None, :])
    np.testing.assert_allclose(got[2:], np.asarray(completion_only)[:, :, :, 0, :], atol=1e-5, rtol=1e-5)


def test_cascade_attention_rejects_mismatched_shapes():
    case = _random_case(seed=0, prompts=2, samples=2)
    with pytest.raises(ValueError, match="do not split into groups for 3 prompts"):
        shared_prompt_attention(**{**case, "prompt_mask": jnp.ones((3, 7), bool)})
    with pytest.raises(ValueError, match="prompt keys/values must be"):
        shared_prompt_attention(**{**case, "prompt_values": case["prompt_values"][:, :, :5]})
    with pytest.raises(ValueError, match="completion_mask must be"):
        shared_prompt_attention(**{**case, "completion_mask": case["completion_mask"][:, :2]})


def test_decode_step_equals_the_cached_forward_over_a_repeated_cache(tiny_model, tiny_config):
    """Prefill two image prompts once, then decode 4 tokens for 3 samples each: through the shared-prompt
    cache (`decode_step`) and through the plain cached forward with the prompt cache repeated per sample
    and P + T slots (what the engine did before). Hidden states agree within 1e-5 at every step."""
    model, text_config = tiny_model, tiny_config.text_config
    batch = prompt_batch(tiny_config, image_prompts(tiny_config)[:2])
    prompts, prompt_length = batch.input_ids.shape
    samples, steps = 3, 4
    rows = prompts * samples
    prompt_mask = jnp.asarray(batch.attention_mask, bool)

    @jax.jit
    def prefill(batch):
        features = model.encode_images(batch.pixel_values, batch.plan)
        cache = model.init_cache(prompts, prompt_length)
        _, cache = model.forward_embeds(model.embed(batch.input_ids, features), batch.position_ids, prompt_mask,
                                        cache, 0, return_hidden=True)
        return cache

    prompt_cache = prefill(jax.tree.map(jnp.asarray, batch))
    shared = shared_prompt_cache(text_config, prompt_cache, samples, steps)
    assert isinstance(shared, SharedPromptCache)
    assert (shared.num_prompts, shared.num_rows, shared.samples_per_prompt) == (prompts, rows, samples)
    repeat = lambda x: jnp.repeat(x, samples, axis=0)
    pad_slots = lambda x: jnp.pad(repeat(x), ((0, 0), (0, 0), (0, steps), (0, 0)))
    repeated = KVCache(keys=tuple(pad_slots(k) for k in prompt_cache.keys),
                       values=tuple(pad_slots(v) for v in prompt_cache.values))
    slot_mask = jnp.pad(repeat(prompt_mask), ((0, 0), (0, steps)))

    shared_step = jax.jit(lambda embeds, positions, cache, index: model.language_model.decode_step(
        embeds, positions, cache, prompt_mask, index))
    plain_step = jax.jit(lambda embeds, positions, mask, cache, index: model.forward_embeds(
        embeds, positions, mask, cache, index, return_hidden=True))
    tokens = np.random.default_rng(5).integers(12, text_config.vocab_size, size=(rows, steps))
    real_tokens = repeat(prompt_mask.sum(axis=1))
    rope_deltas = repeat(jnp.asarray(batch.rope_deltas))
    for step in range(steps):
        embeds = model.embed(jnp.asarray(tokens[:, step:step + 1]))
        positions = decode_position_ids(real_tokens + step, rope_deltas)
        slot_mask = slot_mask.at[:, prompt_length + step].set(True)
        got, shared = shared_step(embeds, positions, shared, jnp.int32(step))
        expected, repeated = plain_step(embeds, positions, slot_mask, repeated, jnp.int32(prompt_length + step))
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=1e-5)
    # The prompt part is only read; the completion part holds exactly the repeated cache's new slots.
    # Keys are stored dimension-major: (rows, kv_heads, head_dim, slots).
    np.testing.assert_array_equal(np.asarray(shared.prompt_keys[0]), np.swapaxes(np.asarray(prompt_cache.keys[0]), 2, 3))
    np.testing.assert_array_equal(np.asarray(shared.prompt_values[0]), np.asarray(prompt_cache.values[0]))
    np.testing.assert_allclose(np.asarray(shared.completion_values[1]),
                               np.asarray(repeated.values[1][:, :, prompt_length:]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.swapaxes(np.asarray(shared.completion_keys[1]), 2, 3),
                               np.asarray(repeated.keys[1][:, :, prompt_length:]), atol=1e-5, rtol=1e-5)
    assert shared_step._cache_size() == 1  # one compiled step for every position


def test_decode_step_rejects_mismatched_inputs(tiny_model, tiny_config):
    text_config = tiny_config.text_config
    prompt_cache = KVCache(keys=tuple(jnp.zeros((2, text_config.num_key_value_heads, 6, text_config.head_dim))
                                      for _ in range(text_config.num_hidden_layers)),
                           values=tuple(jnp.zeros((2, text_config.num_key_value_heads, 6, text_config.head_dim))
                                        for _ in range(text_config.num_hidden_layers)))
    cache = shared_prompt_cache(text_config, prompt_cache, samples_per_prompt=2, completion_length=3)
    embeds = jnp.zeros((4, 1, text_config.hidden_size))
    positions = jnp.zeros((3, 4, 1), jnp.int32)
    mask = jnp.ones((2, 6), bool)
    step = tiny_model.language_model.decode_step
    with pytest.raises(ValueError, match="one token per row"):
        step(jnp.zeros((4, 2, text_config.hidden_size)), jnp.zeros((3, 4, 2), jnp.int32), cache, mask, 0)
    with pytest.raises(ValueError, match="cache holds 4 completion rows, inputs have 2"):
        step(embeds[:2], positions[:, :2], cache, mask, 0)
    with pytest.raises(ValueError, match=r"prompt_mask must have shape \(2, 6\)"):
        step(embeds, positions, cache, mask[:, :5], 0)
    with pytest.raises(ValueError, match="samples_per_prompt must be at least 1"):
        shared_prompt_cache(text_config, prompt_cache, samples_per_prompt=0, completion_length=3)


def _prefill_state(engine, model, batch, **options):
    """The decode state `generate` would hand to the decode program (the prefill program, run)."""
    call = engine._prepare_call(nnx.state(model), batch, **options)
    with engine._tracing_context():
        return engine._prefill_program(*call.prefill_args, settings=call.settings)


def test_decode_state_stores_each_prompt_once(tiny_model, tiny_config):
    batch = prompt_batch(tiny_config, image_prompts(tiny_config))  # 3 prompts, a bucket of 4
    samples, new_tokens = 4, 6
    state = _prefill_state(Engine.for_model(tiny_model), tiny_model, batch, max_new_tokens=new_tokens,
                           num_samples=samples, temperature=1.0, rng=jax.random.key(0))
    text_config = tiny_config.text_config
    kv, dim = text_config.num_key_value_heads, text_config.head_dim
    assert len(state.cache.prompt_keys) == text_config.num_hidden_layers
    for keys, values in zip(state.cache.prompt_keys, state.cache.prompt_values):
        # B prompts, not B * G rows; keys dimension-major.
        assert values.shape == (4, kv, batch.prompt_length, dim)
        assert keys.shape == (4, kv, dim, batch.prompt_length)
    for keys, values in zip(state.cache.completion_keys, state.cache.completion_values):
        assert keys.shape == (4 * samples, kv, dim, new_tokens)
        assert values.shape == (4 * samples, kv, new_tokens, dim)
    assert state.prompt_slots.shape == (4, batch.prompt_length)
    assert state.tokens.shape == (4 * samples, new_tokens)


def test_both_cache_parts_split_over_the_batch_mesh_axes(tiny_config):
    from facialr1_jax.models import init_model

    mesh = make_mesh({"data": 4, "tensor": 2})
    model = init_model(tiny_config, seed=3, mesh=mesh, rules=SAMPLING_RULES)
    engine = Engine.for_model(model, mesh=mesh, rules=SAMPLING_RULES)
    prompts = image_prompts(tiny_config, grids=((1, 6, 8), (1, 4, 4), (1, 8, 4), (1, 4, 4)))
    state = _prefill_state(engine, model, prompt_batch(tiny_config, prompts), max_new_tokens=4, num_samples=2,
                           temperature=1.0, rng=jax.random.key(0))
    for part in (state.cache.prompt_keys[0], state.cache.completion_values[0]):
        spec = tuple(part.sharding.spec) + (None,) * (part.ndim - len(part.sharding.spec))
        assert "data" in jax.tree.leaves(spec[0]), f"{part.shape} rows are not split over data: {spec}"
        assert "tensor" in jax.tree.leaves(spec[1]), f"{part.shape} kv heads are not split over tensor: {spec}"


def test_bfloat16_cache_decodes_close_to_float32(tiny_model, tiny_config):
    # The KV cache dtype option covers both parts; decoding over a bfloat16 cache stays within bfloat16
    # rounding of the float32 run (same greedy prompts, every step's logits compared).
    batch = prompt_batch(tiny_config, image_prompts(tiny_config)[:2])
    options = dict(max_new_tokens=4, num_samples=2, temperature=0.0, stop_token_ids=(), return_logits=True)
    low = Engine.for_model(tiny_model, cache_dtype=jnp.bfloat16)
    state = _prefill_state(low, tiny_model, batch, **options)
    for part in (state.cache.prompt_keys, state.cache.prompt_values, state.cache.completion_keys,
                 state.cache.completion_values):
        assert all(layer.dtype == jnp.bfloat16 for layer in part)
    params = nnx.state(tiny_model)
    full = Engine.for_model(tiny_model, cache_dtype=jnp.float32).generate(params, batch, **options)
    reduced = low.generate(params, batch, **options)
    np.testing.assert_allclose(np.asarray(reduced.logits[:, 1:]), np.asarray(full.logits[:, 1:]), atol=5e-2)
    assert not np.array_equal(np.asarray(reduced.logits[:, 1:]), np.asarray(full.logits[:, 1:]))  # really bfloat16
