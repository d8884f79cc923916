"""Models: Qwen2.5-VL in Flax NNX, its presets and Hugging Face checkpoint import/export."""

from facialr1_jax.models.hf_io import from_pretrained, save_pretrained
from facialr1_jax.models.presets import PRESETS, get_preset
from facialr1_jax.models.qwen2_5_vl import (
    ConfigError,
    KVCache,
    Qwen2_5_VL,
    Qwen2_5_VLConfig,
    TextConfig,
    VisionConfig,
    VisionPlan,
    bound_frame_patches,
    decode_position_ids,
    init_model,
    multimodal_position_ids,
    text_position_ids,
    vision_plan,
)

__all__ = [
    "ConfigError",
    "KVCache",
    "PRESETS",
    "Qwen2_5_VL",
    "Qwen2_5_VLConfig",
    "TextConfig",
    "VisionConfig",
    "VisionPlan",
    "bound_frame_patches",
    "decode_position_ids",
    "from_pretrained",
    "get_preset",
    "init_model",
    "multimodal_position_ids",
    "save_pretrained",
    "text_position_ids",
    "vision_plan",
]
