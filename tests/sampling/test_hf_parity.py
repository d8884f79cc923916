"""Greedy generation equals `transformers`' generate on the same weights (tiny preset, float32).

The PyTorch Qwen2_5_VLForConditionalGeneration is built from our tiny config with seeded random weights
(nothing from a hub), saved, and loaded here with `models.from_pretrained`. Three prompts with images of
different sizes, left-padded to different lengths; both sides stop rows at the same id (padding after
it) and never emit the image / video placeholders.
"""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax.sampling import generate
from tests.models.hf_reference import left_pad, make_reference
from tests.sampling.prompts import image_prompts, prompt_batch

pytestmark = pytest.mark.torch

STEPS = 8


def _reference_generate(reference, config, prompts, stop: int) -> np.ndarray:
    """transformers' greedy tokens, rows padded after their stop token, (rows, STEPS)."""
    import torch

    text = config.text_config
    ids, mask = left_pad([p[0] for p in prompts], text.pad_token_id)
    with torch.no_grad():
        tokens = reference.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(np.concatenate([p[1] for p in prompts])),
            image_grid_thw=torch.tensor(np.concatenate([p[2] for p in prompts])),
            mm_token_type_ids=torch.tensor((ids == config.image_token_id).astype(np.int64)),
            max_new_tokens=STEPS, do_sample=False, eos_token_id=stop, pad_token_id=text.pad_token_id,
            suppress_tokens=[config.image_token_id, config.video_token_id],
        )[:, ids.shape[1]:].numpy()
    # generate() ends early once every row has stopped.
    return np.pad(tokens, ((0, 0), (0, STEPS - tokens.shape[1])), constant_values=text.pad_token_id)


@pytest.mark.parametrize("reference_seed,stop_mid_sequence", [(0, False), (5, True)])
def test_greedy_tokens_equal_transformers_generate(tiny_config, tmp_path, reference_seed, stop_mid_sequence):
    pytest.importorskip("torch")
    from facialr1_jax.models import from_pretrained

    reference = make_reference(tiny_config, seed=reference_seed)
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    prompts = image_prompts(tiny_config, seed=reference_seed)
    stop = tiny_config.text_config.eos_token_id
    if stop_mid_sequence:  # stop row 1 at its fourth token (and any other row that produces it)
        stop = int(_reference_generate(reference, tiny_config, prompts, stop)[1, 3])
    expected = _reference_generate(reference, tiny_config, prompts, stop)

    out = generate(ours, prompt_batch(tiny_config, prompts), max_new_tokens=STEPS, temperature=0.0,
                   stop_token_ids=(stop,), return_logits=True)  # the program of the engine tests' greedy run
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    hits = expected == stop
    expected_lengths = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, STEPS)
    np.testing.assert_array_equal(np.asarray(out.lengths), expected_lengths)
    if stop_mid_sequence:
        assert expected_lengths[1] <= 4
