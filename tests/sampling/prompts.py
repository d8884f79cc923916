"""Prompt batches for the engine tests: text + one image per prompt, images of different sizes."""

from __future__ import annotations

import numpy as np

from facialr1_jax.sampling import PromptBatch

# Grids (t, h, w) in patches: 12, 4 and 8 merged image tokens; 96 patches pad to the 128 bucket.
GRIDS = ((1, 6, 8), (1, 4, 4), (1, 8, 4))


def image_prompts(config, grids=GRIDS, seed: int = 0, text_lengths=None):
    """(input_ids, pixel_values, grid) per prompt: text, <vision_start>, placeholders, <vision_end>, text.

    Prompt i gets text_lengths[i] text tokens before the image (default 1 + 2i), so rows differ in length
    and the batch is left-padded.
    """
    rng = np.random.default_rng(seed)
    vocab = config.text_config.vocab_size
    reserved = {config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id}
    text_pool = np.array([t for t in range(12, vocab) if t not in reserved])
    prompts = []
    for index, grid in enumerate(grids):
        grid = np.asarray(grid, np.int64).reshape(1, 3)
        before = 1 + 2 * index if text_lengths is None else text_lengths[index]
        image_tokens = int(grid.prod()) // config.vision_config.merge_unit
        ids = (list(rng.choice(text_pool, before)) + [config.vision_start_token_id]
               + [config.image_token_id] * image_tokens + [config.vision_end_token_id]
               + list(rng.choice(text_pool, 3)))
        pixel_values = rng.standard_normal((int(grid.prod()), config.vision_config.patch_dim)).astype(np.float32)
        prompts.append((ids, pixel_values, grid))
    return prompts


def prompt_batch(config, prompts, max_length: int = 64) -> PromptBatch:
    return PromptBatch.from_prompts(prompts, config, pad_id=config.text_config.pad_token_id, max_length=max_length)


def full_sequence(config, prompts, tokens: np.ndarray, num_samples: int = 1):
    """The training-forward view of prompt + completion: left-padded prompts (each repeated num_samples
    times) followed by the generated tokens, with M-RoPE positions over the whole sequence.

    Returns (input_ids, attention_mask, position_ids, pixel_values, grid, prompt_length).
    """
    from facialr1_jax.models import multimodal_position_ids

    repeated = [p for p in prompts for _ in range(num_samples)]
    prompt_length = max(len(p[0]) for p in repeated)
    rows, steps = tokens.shape
    ids = np.full((rows, prompt_length + steps), config.text_config.pad_token_id, np.int32)
    mask = np.zeros_like(ids, bool)
    for row, (prompt_ids, _, _) in enumerate(repeated):
        ids[row, prompt_length - len(prompt_ids):prompt_length] = prompt_ids
        mask[row, prompt_length - len(prompt_ids):prompt_length] = True
    ids[:, prompt_length:] = tokens
    mask[:, prompt_length:] = True
    grid = np.concatenate([p[2] for p in repeated])
    pixel_values = np.concatenate([p[1] for p in repeated])
    positions, _ = multimodal_position_ids(ids, grid, mask, config)
    return ids, mask, positions, pixel_values, grid, prompt_length
