"""The decode loop's growing completion cache (`sampling.engine.completion_windows`).

Generating 128 tokens, the engine decodes tokens 1-32 over a 32-slot completion cache, 33-64 over 64
slots and the rest over 128. Slots past the current token are masked either way, so the result must be
the one-window decode's: the same tokens, lengths and log-probs (to float rounding).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.models import get_preset
from facialr1_jax.models.qwen2_5_vl.text import SharedPromptCache
from facialr1_jax.sampling import Engine
from facialr1_jax.sampling.engine import MIN_COMPLETION_WINDOW, completion_windows
from tests.sampling.prompts import image_prompts, prompt_batch

NEW_TOKENS = 128


@pytest.mark.parametrize("new_tokens, windows", [
    (1, (1,)), (48, (48,)), (64, (32, 64)), (100, (50, 100)), (128, (32, 64, 128)), (256, (64, 128, 256)),
    (130, (32, 65, 130))])
def test_completion_windows(new_tokens, windows):
    assert completion_windows(new_tokens) == windows
    assert all(w >= MIN_COMPLETION_WINDOW for w in windows[:-1])


def test_a_cache_grows_with_its_written_slots_kept():
    rows, kv, dim, slots = 4, 2, 3, 5
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    cache = SharedPromptCache(prompt_keys=(normal(2, kv, dim, 7),), prompt_values=(normal(2, kv, 7, dim),),
                              completion_keys=(normal(rows, kv, dim, slots),),
                              completion_values=(normal(rows, kv, slots, dim),))
    grown = cache.with_completion_length(9)
    assert grown.completion_length == 9 and grown.prompt_length == 7
    np.testing.assert_array_equal(np.asarray(grown.completion_keys[0])[..., :slots], cache.completion_keys[0])
    np.testing.assert_array_equal(np.asarray(grown.completion_values[0])[:, :, :slots], cache.completion_values[0])
    assert not np.any(np.asarray(grown.completion_keys[0])[..., slots:])
    assert not np.any(np.asarray(grown.completion_values[0])[:, :, slots:])
    assert grown.prompt_keys[0] is cache.prompt_keys[0]
    assert cache.with_completion_length(slots) is cache
    with pytest.raises(ValueError, match="cannot shrink"):
        cache.with_completion_length(slots - 1)


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_config):
    """Greedy and sampled generation of 128 tokens, growing and flat cache, with stop ids that end rows
    inside the first window, inside the second and never."""
    batch = prompt_batch(tiny_config, image_prompts(tiny_config))
    params = nnx.state(tiny_model)
    engines = {grow: Engine.for_model(tiny_model, grow_completion_cache=grow) for grow in (True, False)}
    # Stops picked from a first greedy run: row 0's token 10 and row 1's token 40 (when they first occur).
    free = jax.device_get(engines[False].generate(params, batch, max_new_tokens=NEW_TOKENS, temperature=0.0,
                                                  stop_token_ids=()))
    stops = (int(free.tokens[0, 10]), int(free.tokens[1, 40]))
    out = {}
    for grow, engine in engines.items():
        greedy = engine.generate(params, batch, max_new_tokens=NEW_TOKENS, temperature=0.0, stop_token_ids=stops,
                                 return_logits=True)
        sampled = engine.generate(params, batch, max_new_tokens=NEW_TOKENS, num_samples=3, temperature=1.0,
                                  rng=jax.random.key(11), stop_token_ids=())
        out[grow] = jax.device_get((greedy, sampled))
    return out, stops


def test_growing_the_cache_changes_nothing(runs):
    out, stops = runs
    (greedy, sampled), (flat_greedy, flat_sampled) = out[True], out[False]
    lengths = greedy.lengths
    assert lengths.min() <= MIN_COMPLETION_WINDOW < lengths.max(), f"stops {stops} ended rows at {lengths}"
    np.testing.assert_array_equal(greedy.tokens, flat_greedy.tokens)
    np.testing.assert_array_equal(greedy.lengths, flat_greedy.lengths)
    np.testing.assert_array_equal(greedy.mask, flat_greedy.mask)
    np.testing.assert_allclose(greedy.logits, flat_greedy.logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(greedy.policy_log_probs, flat_greedy.policy_log_probs, atol=1e-5)
    assert int(sampled.num_steps) == int(flat_sampled.num_steps) == NEW_TOKENS
    np.testing.assert_array_equal(sampled.tokens, flat_sampled.tokens)
    np.testing.assert_allclose(sampled.log_probs, flat_sampled.log_probs, atol=1e-5)
    np.testing.assert_allclose(sampled.policy_log_probs, flat_sampled.policy_log_probs, atol=1e-5)


def test_the_decode_program_has_a_loop_per_window(tiny_model, tiny_config):
    batch = prompt_batch(tiny_config, image_prompts(tiny_config))
    params = nnx.state(tiny_model)
    text_config = tiny_config.text_config
    kv_heads, head_dim = text_config.num_key_value_heads, text_config.hidden_size // text_config.num_attention_heads
    for grow in (True, False):
        engine = Engine.for_model(tiny_model, grow_completion_cache=grow)
        text = engine.compiled_decode_text(params, batch, max_new_tokens=NEW_TOKENS, temperature=0.0)
        entry = text[text.index("\nENTRY"):]
        loops = [line.split(" while(")[0] for line in entry[:entry.index("\n}")].splitlines() if " while(" in line]
        windows = completion_windows(NEW_TOKENS) if grow else (NEW_TOKENS,)
        assert len(loops) == len(windows), loops
        # Loop i carries completion keys of window i's slots: (rows, kv_heads, head_dim, window).
        for loop, window in zip(loops, windows):
            assert f",{kv_heads},{head_dim},{window}]" in loop, (window, loop[:300])


def test_growing_the_cache_raises_no_donation_warning(tiny_model, tiny_config):
    # The first window's donated buffers cannot become the larger outputs; the engine says nothing of it.
    batch = prompt_batch(tiny_config, image_prompts(tiny_config))
    engine = Engine.for_model(tiny_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate(nnx.state(tiny_model), batch, max_new_tokens=64, temperature=0.0)
    assert not [w for w in caught if "donated" in str(w.message)], [str(w.message) for w in caught]
