"""Qwen2.5-VL configuration: our dataclasses and the Hugging Face `config.json` layouts.

Two on-disk layouts exist and both load:
  * transformers >= 5 (what `save_pretrained` writes today): a top level with `text_config` (whose
    `rope_parameters` holds rope_type, rope_theta and mrope_section) and `vision_config` (whose
    `rope_parameters` holds the axial rotary theta);
  * the layout of the published Qwen2.5-VL checkpoints: language-model fields flat at the top level,
    `rope_theta` beside them and `rope_scaling = {"type": "mrope", "mrope_section": [...]}`, with
    vision keys such as `in_chans`.
`to_hf_dict` always writes the transformers 5 layout, which both transformers 5 and our loader read.

Everything is validated when the config is built, so a wrong checkpoint fails with a message that
names the field, not with a shape error deep inside a compiled forward.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# Keys of the published flat layout that belong to the language model.
_FLAT_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "attention_dropout",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


class ConfigError(ValueError):
    """A Qwen2.5-VL configuration value that the model cannot be built from."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The vision tower (a ViT with windowed attention and a 2x2 patch merger)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int  # width of the merged tokens, equal to the language model's hidden size
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    window_size: int = 112  # window side in pixels; windows are block-diagonal attention segments
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2  # video only; kept so exported configs round-trip
    initializer_range: float = 0.02

    def __post_init__(self):
        object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
        for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
                     "temporal_patch_size", "spatial_merge_size", "in_channels", "window_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"vision_config.{name} must be positive, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"vision_config.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 4:
            raise ConfigError(
                f"vision_config head_dim ({self.head_dim}) must be divisible by 4 for the 2-D rotary embedding")
        if self.window_size % (self.patch_size * self.spatial_merge_size):
            raise ConfigError(
                f"vision_config.window_size ({self.window_size}) must be a multiple of patch_size * "
                f"spatial_merge_size ({self.patch_size * self.spatial_merge_size})")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision_config.fullatt_block_indexes {bad} are outside [0, depth={self.depth})")
        if self.hidden_act != "silu":
            raise ConfigError(f"vision_config.hidden_act {self.hidden_act!r} is not supported (only 'silu')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row of `pixel_values` (channels x time x patch x patch)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        """Patches merged into one language-model token (2x2 = 4)."""
        return self.spatial_merge_size**2

    @property
    def window_patches(self) -> int:
        """The most patches one attention window can hold ((112 px / 14 px)^2 = 64)."""
        return (self.window_size // self.patch_size) ** 2

    @property
    def merged_window_size(self) -> int:
        """Window side measured in merged tokens (112 px / 14 px / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder with multimodal rotary embedding (M-RoPE)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    # Rotary frequency slots given to the (temporal, height, width) position streams; sums to head_dim/2.
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None
    attention_dropout: float = 0.0
    use_sliding_window: bool = False
    sliding_window: int | None = 32768
    max_window_layers: int = 28
    initializer_range: float = 0.02
    use_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if not self.use_sliding_window:
            # As transformers does: the window size means nothing while sliding windows are off.
            object.__setattr__(self, "sliding_window", None)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"text_config.{name} must be positive, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"text_config.hidden_size ({self.hidden_size}) must be divisible by "
                              f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"text_config.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if len(self.mrope_section) != 3 or 2 * sum(self.mrope_section) != self.head_dim:
            raise ConfigError(f"text_config mrope_section {list(self.mrope_section)} must have 3 entries summing to "
                              f"head_dim / 2 = {self.head_dim // 2}")
        if self.use_sliding_window:
            raise ConfigError("text_config.use_sliding_window=True is not supported: Qwen2.5-VL checkpoints attend "
                              "over the full context in every layer")
        if self.hidden_act != "silu":
            raise ConfigError(f"text_config.hidden_act {self.hidden_act!r} is not supported (only 'silu')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_query_groups(self) -> int:
        """Query heads sharing one key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    """The whole model: a vision tower feeding merged image tokens into the language model."""

    text_config: TextConfig
    vision_config: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int | None = 151654
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.vision_config.out_hidden_size != self.text_config.hidden_size:
            raise ConfigError(f"vision_config.out_hidden_size ({self.vision_config.out_hidden_size}) must equal "
                              f"text_config.hidden_size ({self.text_config.hidden_size})")
        for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
            token = getattr(self, name)
            if not 0 <= token < self.text_config.vocab_size:
                raise ConfigError(f"{name}={token} is outside the vocabulary [0, {self.text_config.vocab_size})")

    def replace(self, **changes) -> "Qwen2_5_VLConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------------
    # Hugging Face config.json
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> "Qwen2_5_VLConfig":
        """Builds a config from a parsed Hugging Face `config.json` (either layout, see module doc)."""
        model_type = raw.get("model_type", "qwen2_5_vl")
        if model_type != "qwen2_5_vl":
            raise ConfigError(f"config.json model_type is {model_type!r}; only 'qwen2_5_vl' is supported")
        if "text_config" in raw and isinstance(raw["text_config"], dict):
            text_raw = dict(raw["text_config"])
            # Pre-v5 saves kept tie_word_embeddings inside text_config.
            tie = bool(raw.get("tie_word_embeddings", False) or text_raw.get("tie_word_embeddings", False))
        else:
            text_raw = {key: raw[key] for key in _FLAT_TEXT_KEYS if key in raw}
            tie = bool(raw.get("tie_word_embeddings", False))
        text = _text_config_from_hf(text_raw)
        vision = _vision_config_from_hf(dict(raw.get("vision_config") or {}), text.hidden_size)
        return cls(
            text_config=text,
            vision_config=vision,
            image_token_id=int(raw.get("image_token_id", 151655)),
            video_token_id=int(raw.get("video_token_id", 151656)),
            vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
            vision_token_id=raw.get("vision_token_id"),
            tie_word_embeddings=tie,
        )

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The transformers 5 `config.json` dictionary; `dtype` names the stored weight dtype."""
        text, vision = self.text_config, self.vision_config
        eos = list(text.eos_token_id) if isinstance(text.eos_token_id, tuple) else text.eos_token_id
        text_dict = {
            "attention_dropout": text.attention_dropout,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": eos,
            "hidden_act": text.hidden_act,
            "hidden_size": text.hidden_size,
            "initializer_range": text.initializer_range,
            "intermediate_size": text.intermediate_size,
            "layer_types": ["full_attention"] * text.num_hidden_layers,
            "max_position_embeddings": text.max_position_embeddings,
            "max_window_layers": text.max_window_layers,
            "model_type": "qwen2_5_vl_text",
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "pad_token_id": text.pad_token_id,
            "rms_norm_eps": text.rms_norm_eps,
            "rope_parameters": {
                "mrope_section": list(text.mrope_section),
                "rope_theta": text.rope_theta,
                "rope_type": "default",
            },
            "sliding_window": None,
            "use_cache": text.use_cache,
            "use_sliding_window": False,
            "vocab_size": text.vocab_size,
        }
        vision_dict = {
            "depth": vision.depth,
            "fullatt_block_indexes": list(vision.fullatt_block_indexes),
            "hidden_act": vision.hidden_act,
            "hidden_size": vision.hidden_size,
            "in_channels": vision.in_channels,
            "initializer_range": vision.initializer_range,
            "intermediate_size": vision.intermediate_size,
            "model_type": "qwen2_5_vl_vision",
            "num_heads": vision.num_heads,
            "out_hidden_size": vision.out_hidden_size,
            "patch_size": vision.patch_size,
            "rope_parameters": {"rope_theta": vision.rope_theta, "rope_type": "axial"},
            "spatial_merge_size": vision.spatial_merge_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "tokens_per_second": vision.tokens_per_second,
            "window_size": vision.window_size,
        }
        out = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "dtype": dtype,
            "image_token_id": self.image_token_id,
            "model_type": "qwen2_5_vl",
            "text_config": text_dict,
            "tie_word_embeddings": self.tie_word_embeddings,
            "video_token_id": self.video_token_id,
            "vision_config": vision_dict,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_start_token_id": self.vision_start_token_id,
        }
        if self.vision_token_id is not None:
            out["vision_token_id"] = self.vision_token_id
        return out

    @classmethod
    def from_pretrained_dir(cls, directory: str | os.PathLike) -> "Qwen2_5_VLConfig":
        path = os.path.join(directory, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config.json in checkpoint directory {directory}")
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path} is not valid JSON: {error}") from error
        try:
            return cls.from_hf_dict(raw)
        except (ConfigError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: {error}") from error


def _text_config_from_hf(raw: dict[str, Any]) -> TextConfig:
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"text_config rope_type {rope_type!r} is not supported (only default / mrope)")
    theta = rope.get("rope_theta", raw.get("rope_theta", 1_000_000.0))
    if "mrope_section" not in rope:
        raise ConfigError("text_config has no mrope_section (expected in rope_parameters or rope_scaling)")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ConfigError(f"text_config is missing {missing}")
    kv_heads = raw.get("num_key_value_heads") or raw["num_attention_heads"]
    sliding = raw.get("sliding_window")
    return TextConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=int(raw["num_attention_heads"]),
        num_key_value_heads=int(kv_heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        mrope_section=tuple(rope["mrope_section"]),
        hidden_act=raw.get("hidden_act", "silu"),
        max_position_embeddings=int(raw.get("max_position_embeddings", 128000)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        attention_dropout=float(raw.get("attention_dropout", 0.0)),
        use_sliding_window=bool(raw.get("use_sliding_window", False)),
        sliding_window=None if sliding is None else int(sliding),
        max_window_layers=int(raw.get("max_window_layers", raw["num_hidden_layers"])),
        initializer_range=float(raw.get("initializer_range", 0.02)),
        use_cache=bool(raw.get("use_cache", True)),
    )


def _vision_config_from_hf(raw: dict[str, Any], text_hidden_size: int) -> VisionConfig:
    rope = raw.get("rope_parameters") or {}

    def square(name: str, legacy_name: str | None, default: int) -> int:
        value = raw.get(name, raw.get(legacy_name, default) if legacy_name else default)
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ConfigError(f"vision_config.{name}={value} must be square")
            value = value[0]
        return int(value)

    return VisionConfig(
        depth=int(raw.get("depth", 32)),
        hidden_size=int(raw.get("hidden_size", 3584)),
        intermediate_size=int(raw.get("intermediate_size", 3420)),
        num_heads=int(raw.get("num_heads", 16)),
        out_hidden_size=int(raw.get("out_hidden_size", text_hidden_size)),
        patch_size=square("patch_size", "spatial_patch_size", 14),
        temporal_patch_size=square("temporal_patch_size", None, 2),
        spatial_merge_size=int(raw.get("spatial_merge_size", 2)),
        in_channels=int(raw.get("in_channels", raw.get("in_chans", 3))),
        window_size=int(raw.get("window_size", 112)),
        fullatt_block_indexes=tuple(raw.get("fullatt_block_indexes", (7, 15, 23, 31))),
        hidden_act=raw.get("hidden_act", "silu"),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        tokens_per_second=int(raw.get("tokens_per_second", 2)),
        initializer_range=float(raw.get("initializer_range", 0.02)),
    )
