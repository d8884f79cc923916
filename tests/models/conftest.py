"""Fixtures for the model tests: a PyTorch reference built from our tiny preset and saved locally.

The reference is `transformers`' Qwen2_5_VLForConditionalGeneration with random weights
(torch.manual_seed), built from `get_preset("tiny").to_hf_dict()`; nothing comes from a hub.
"""

from __future__ import annotations

import pytest

from facialr1_jax.models import get_preset
from tests.models.hf_reference import make_reference

TINY = get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_reference():
    return make_reference(TINY)


@pytest.fixture(scope="session")
def tiny_reference_dir(tiny_reference, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_hf")
    tiny_reference.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_ours(tiny_reference_dir):
    from facialr1_jax.models import from_pretrained

    return from_pretrained(tiny_reference_dir)


@pytest.fixture(scope="session")
def image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil()
