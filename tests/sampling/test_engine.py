"""The rollout engine against the model's own uncached forward, and its structural guarantees.

All on the tiny preset with random weights, float32: decode-step logits vs one uncached forward over
prompt + completion; sampler log-probs vs the training forward's `token_log_probs`; one prefill fanned
out vs the prompts repeated; per-row stops and the early exit; no recompilation inside a bucket;
sharded == unsharded on 8 fake CPU devices; clear errors for bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring
from flax import nnx
from jax._src import dispatch

from facialr1_jax.models import init_model, vision_plan
from facialr1_jax.parallel import SAMPLING_RULES, make_mesh
from facialr1_jax.sampling import Engine, PromptBatch, filter_logits, generate
from facialr1_jax.sampling.samplers import SamplingConfig
from tests.sampling.prompts import full_sequence, image_prompts, prompt_batch

TOL = dict(atol=1e-4, rtol=1e-4)
STEPS = 8


def _training_hidden(model, config, prompts, tokens, num_samples=1):
    """Final hidden states of one uncached forward over prompt + completion (the training view)."""
    ids, mask, positions, pixel_values, grid, prompt_length = full_sequence(config, prompts, tokens, num_samples)
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, config.vision_config))
    forward = jax.jit(lambda i, p, m, v, pl: model.forward(i, p, m, v, pl, return_hidden=True)[0])
    hidden = forward(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), jnp.asarray(pixel_values), plan)
    # Position prompt_length - 1 + t predicts generated token t.
    return hidden[:, prompt_length - 1:prompt_length - 1 + tokens.shape[1]]


@pytest.fixture(scope="module")
def prompts(tiny_config):
    return image_prompts(tiny_config)


@pytest.fixture(scope="module")
def greedy_run(tiny_model, tiny_config, prompts):
    """Greedy, never stopping, with every step's logits."""
    out = generate(tiny_model, prompt_batch(tiny_config, prompts), max_new_tokens=STEPS, temperature=0.0,
                   stop_token_ids=(), return_logits=True)
    return jax.device_get(out)


@pytest.fixture(scope="module")
def fanned_out_run(tiny_model, tiny_config, prompts):
    """Two prompts x 4 samples at temperature 1 from one prefill each."""
    out = generate(tiny_model, prompt_batch(tiny_config, prompts[:2]), max_new_tokens=STEPS, num_samples=4,
                   temperature=1.0, rng=jax.random.key(42), stop_token_ids=())
    return jax.device_get(out)


def test_decode_step_logits_equal_the_uncached_forward(tiny_model, tiny_config, prompts, greedy_run):
    tokens = np.asarray(greedy_run.tokens)
    assert tokens.shape == (3, STEPS) and np.all(greedy_run.lengths == STEPS)
    hidden = _training_hidden(tiny_model, tiny_config, prompts, tokens)
    expected = np.asarray(jax.jit(tiny_model.logits)(hidden))
    np.testing.assert_allclose(greedy_run.logits, expected, **TOL)
    np.testing.assert_array_equal(tokens, np.argmax(expected, axis=-1))


def test_sampler_log_probs_equal_the_training_forward(tiny_model, tiny_config, prompts, fanned_out_run):
    tokens = np.asarray(fanned_out_run.tokens)
    hidden = _training_hidden(tiny_model, tiny_config, prompts[:2], tokens, num_samples=4)
    recomputed = np.asarray(jax.jit(tiny_model.token_log_probs)(hidden, jnp.asarray(tokens)))
    np.testing.assert_allclose(fanned_out_run.policy_log_probs, recomputed, **TOL)
    # The sampled distribution renormalises over the tokens left after suppressing the image / video
    # placeholders: recompute that too.
    logits = jax.jit(tiny_model.logits)(hidden)
    banned = np.isin(np.arange(logits.shape[-1]), [tiny_config.image_token_id, tiny_config.video_token_id])
    sampled = jax.nn.log_softmax(jnp.where(banned, -jnp.inf, logits), axis=-1)
    sampled = np.take_along_axis(np.asarray(sampled), tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(fanned_out_run.log_probs, sampled, **TOL)
    assert not np.isin(tokens, [tiny_config.image_token_id, tiny_config.video_token_id]).any()


def test_fan_out_equals_repeating_the_prompts(tiny_model, tiny_config, prompts, fanned_out_run):
    repeated = [prompt for prompt in prompts[:2] for _ in range(4)]
    out = jax.device_get(generate(tiny_model, prompt_batch(tiny_config, repeated), max_new_tokens=STEPS,
                                  num_samples=1, temperature=1.0, rng=jax.random.key(42), stop_token_ids=()))
    # Same per-row keys, so the same tokens. The floats may differ in the last bits: fanned out, a
    # prompt's attention takes its G samples' queries as one matmul; repeated, each row is its own group
    # of one. Exact token equality holds unless a draw lands within such a rounding of a tie, which these
    # fixed seeds do not (the run is deterministic, so this is not a flaky check); log-probs get 1e-5.
    np.testing.assert_array_equal(out.tokens, fanned_out_run.tokens)
    np.testing.assert_allclose(out.log_probs, fanned_out_run.log_probs, atol=1e-5, rtol=1e-5)
    # The samples of one prompt differ from each other (independent keys per row).
    assert len({tuple(row) for row in np.asarray(fanned_out_run.tokens)[:4]}) > 1


def test_rows_stop_at_their_first_stop_token(tiny_model, tiny_config, prompts, greedy_run):
    # return_logits as in greedy_run, so this reuses its compiled programs (stop ids are a traced input).
    free = np.asarray(greedy_run.tokens)
    stop = int(free[0, 3])
    out = jax.device_get(generate(tiny_model, prompt_batch(tiny_config, prompts), max_new_tokens=STEPS,
                                  temperature=0.0, stop_token_ids=(stop,), return_logits=True))
    pad = tiny_config.text_config.pad_token_id
    for row in range(3):
        hits = np.flatnonzero(free[row] == stop)
        length = int(hits[0]) + 1 if hits.size else STEPS
        assert out.lengths[row] == length
        np.testing.assert_array_equal(out.tokens[row, :length], free[row, :length])
        assert np.all(out.tokens[row, length:] == pad)
        np.testing.assert_array_equal(out.mask[row], (np.arange(STEPS) < length).astype(np.float32))
        assert np.all(out.log_probs[row, length:] == 0) and np.all(out.log_probs[row, :length] < 0)
    assert int(out.num_steps) == STEPS or np.all(out.lengths < STEPS)


def test_loop_exits_early_when_every_row_stopped(tiny_model, tiny_config, prompts, greedy_run):
    free = np.asarray(greedy_run.tokens)
    stops = tuple(int(t) for t in np.unique(free[:, 1]))  # every row stops at step 1 at the latest
    out = generate(tiny_model, prompt_batch(tiny_config, prompts), max_new_tokens=STEPS, temperature=0.0,
                   stop_token_ids=stops, return_logits=True)  # the greedy_run program
    assert int(out.num_steps) <= 2
    assert np.all(np.asarray(out.lengths) <= 2)


def _check_filtered_log_probs(model, config, prompts, out, sampling: SamplingConfig, num_samples: int):
    """policy_log_probs == log_softmax(logits / T) and log_probs == the filtered distribution, both
    recomputed from one uncached forward over prompt + completion."""
    tokens = np.asarray(out.tokens)
    logits = jax.jit(model.logits)(_training_hidden(model, config, prompts, tokens, num_samples=num_samples))
    pick = lambda logp: np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.policy_log_probs, pick(jax.nn.log_softmax(logits / sampling.temperature)), **TOL)
    banned = np.isin(np.arange(logits.shape[-1]), [config.image_token_id, config.video_token_id])
    allowed = jnp.where(banned, -jnp.inf, logits).reshape(-1, logits.shape[-1])
    filtered = jax.jit(filter_logits, static_argnums=1)(allowed, sampling)
    np.testing.assert_allclose(out.log_probs, pick(jax.nn.log_softmax(filtered).reshape(logits.shape)), **TOL)
    assert np.all(np.asarray(out.log_probs) >= np.asarray(out.policy_log_probs) - 1e-5)  # mass was removed


def test_no_recompilation_inside_one_bucket(tiny_model, tiny_config):
    """10 calls, prompt lengths and image sizes varying inside their buckets, 3 prompts padded to 4
    rows: one prefill and one decode program, and no XLA compilation at all after the first call. The
    calls sample with temperature, top-k and top-p; the last one's log-probs are checked too."""
    engine = Engine.for_model(tiny_model)
    params = nnx.state(tiny_model)
    sampling = SamplingConfig(temperature=0.7, top_k=20, top_p=0.9)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for call in range(10):
            # Prompts of 10 to 28 tokens (bucket 32); the three images have 68 to 108 patches (bucket 128).
            grids = [(1, 6, 6 + 2 * (call % 2)), (1, 4, 4 + 2 * (call % 3)), (1, 4, 4 + 2 * (call % 4))]
            prompts = image_prompts(tiny_config, grids, seed=call, text_lengths=(1 + call, 2, 3 + call % 5))
            batch = prompt_batch(tiny_config, prompts)
            assert batch.prompt_length == 32 and batch.pixel_values.shape[0] == 128
            out = engine.generate(params, batch, max_new_tokens=STEPS, num_samples=2, temperature=sampling.temperature,
                                  top_k=sampling.top_k, top_p=sampling.top_p, rng=jax.random.key(call),
                                  stop_token_ids=())
            np.asarray(out.tokens)
            counts.append(len(compiles))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert counts[0] > 0  # the first call compiled (so the listener works)
    assert counts[1:] == [counts[0]] * 9, f"compilations after each call: {counts}"
    # One prefill, one decode, and on one CPU device the decode kernels' re-layout.
    assert engine.compiled_programs() == 2 + engine.decode_kernels
    _check_filtered_log_probs(tiny_model, tiny_config, prompts, jax.device_get(out), sampling, num_samples=2)


def test_text_only_prompts_with_a_bfloat16_cache(tiny_model, tiny_config):
    text = [list(range(20, 20 + n)) for n in (5, 9)]
    batch = PromptBatch.from_prompts([(ids, None, None) for ids in text], tiny_config,
                                     pad_id=tiny_config.text_config.pad_token_id, max_length=64)
    engine = Engine.for_model(tiny_model, cache_dtype=jnp.bfloat16)
    assert engine.cache_dtype == jnp.bfloat16
    out = engine.generate(nnx.state(tiny_model), batch, max_new_tokens=2, temperature=0.0, stop_token_ids=())
    # The first token comes from the prefill, whose keys / values were read back from the bfloat16 cache.
    ids, mask = np.asarray(batch.input_ids), np.asarray(batch.attention_mask)
    logits = tiny_model(ids, attention_mask=mask)[:, -1]
    expected = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], np.argmax(expected, axis=-1))
    np.testing.assert_allclose(np.asarray(out.log_probs)[:, 0], expected.max(axis=-1), atol=2e-2)


def test_sharded_generation_equals_unsharded(tiny_config, prompts, fanned_out_run):
    mesh = make_mesh({"data": 4, "tensor": 2})
    sharded_model = init_model(tiny_config, seed=3, mesh=mesh, rules=SAMPLING_RULES)
    out = generate(sharded_model, prompt_batch(tiny_config, prompts[:2]), max_new_tokens=STEPS, num_samples=4,
                   temperature=1.0, rng=jax.random.key(42), stop_token_ids=(), mesh=mesh, rules=SAMPLING_RULES)
    np.testing.assert_array_equal(np.asarray(out.tokens), fanned_out_run.tokens)
    np.testing.assert_allclose(np.asarray(out.log_probs), fanned_out_run.log_probs, atol=1e-5, rtol=1e-5)
    kernel = sharded_model.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert "tensor" in jax.tree.leaves(tuple(kernel.sharding.spec)), "parameters were not split over tensor"


def test_bad_inputs_are_reported(tiny_model, tiny_config, prompts):
    batch = prompt_batch(tiny_config, prompts)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, batch, max_new_tokens=0, temperature=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        generate(tiny_model, batch, max_new_tokens=2, num_samples=0, temperature=0.0)
    with pytest.raises(ValueError, match="needs rng"):
        generate(tiny_model, batch, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="stop_token_ids"):
        generate(tiny_model, batch, max_new_tokens=2, temperature=0.0, stop_token_ids=(-3,))
    right_padded = batch.replace(input_ids=batch.input_ids[:, ::-1], attention_mask=batch.attention_mask[:, ::-1])
    with pytest.raises(ValueError, match=r"rows \[0, 1, 2\] are not left-padded"):
        generate(tiny_model, right_padded, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="no pixel_values"):
        generate(tiny_model, batch.replace(pixel_values=None, plan=None), max_new_tokens=2, temperature=0.0)
    with pytest.raises(KeyError, match="collate_prompts"):
        generate(tiny_model, {"input_ids": batch.input_ids}, max_new_tokens=2, temperature=0.0)


def test_stop_token_defaults():
    from facialr1_jax.models import get_preset
    from facialr1_jax.sampling import default_stop_token_ids, stop_token_ids_for

    assert default_stop_token_ids(get_preset("qwen2_5_vl_7b")) == (151645,)
    assert default_stop_token_ids(get_preset("tiny", text_config={"eos_token_id": (2, 5)})) == (2, 5)

    class Tokenizer:  # the two attributes of a Hugging Face tokenizer that are read
        eos_token_id = 7

        @staticmethod
        def get_vocab():
            return {"<|im_end|>": 7, "<|endoftext|>": 9, "hello": 3}

    assert stop_token_ids_for(Tokenizer()) == (7, 9)
