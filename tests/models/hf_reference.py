"""Helpers for the model tests: the PyTorch reference built from our presets, prompts and images.

The reference is `transformers`' Qwen2_5_VLForConditionalGeneration with random weights
(torch.manual_seed), built from `get_preset("tiny").to_hf_dict()`; nothing comes from a hub.
"""

from __future__ import annotations

import numpy as np
import pytest


def make_reference(config, seed: int = 0):
    """A PyTorch Qwen2_5_VLForConditionalGeneration with seeded random weights for `config` (ours)."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLConfig as HFConfig
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(HFConfig(**config.to_hf_dict())).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so a wrongly mapped norm weight or
    # bias cannot go unnoticed.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def reference_logits(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> np.ndarray:
    """The reference forward fed exactly like our convenience forward (multimodal positions on)."""
    import torch

    input_ids = np.asarray(input_ids)
    kwargs = {"input_ids": torch.tensor(input_ids)}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask, dtype=np.int64))
    if pixel_values is not None:
        kwargs["pixel_values"] = torch.tensor(np.asarray(pixel_values))
        kwargs["image_grid_thw"] = torch.tensor(np.asarray(image_grid_thw))
        # transformers 5 computes M-RoPE positions only when told which tokens are image tokens.
        kwargs["mm_token_type_ids"] = torch.tensor((input_ids == model.config.image_token_id).astype(np.int64))
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


def random_image(height: int, width: int, seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_prompt(config, image_tokens: int, before=(30, 31), after=(40, 41, 42)) -> list[int]:
    """text, <vision_start>, image placeholders, <vision_end>, text."""
    return (list(before) + [config.vision_start_token_id] + [config.image_token_id] * image_tokens
            + [config.vision_end_token_id] + list(after))


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return ids, mask
