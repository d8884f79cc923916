"""Qwen2.5-VL in Flax NNX (placeholder docstring, completed below)."""
from facialr1_jax.models.qwen2_5_vl.config import ConfigError, Qwen2_5_VLConfig, TextConfig, VisionConfig
from facialr1_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from facialr1_jax.models.qwen2_5_vl.positions import multimodal_position_ids, text_position_ids
from facialr1_jax.models.qwen2_5_vl.text import KVCache, init_cache
from facialr1_jax.models.qwen2_5_vl.vision import VisionPlan, vision_plan
