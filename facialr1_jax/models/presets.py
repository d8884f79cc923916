"""Named model sizes: `get_preset(name, **overrides) -> Qwen2_5_VLConfig`.

| preset          | language model              | vision tower              | use |
|-----------------|-----------------------------|---------------------------|-----|
| `tiny`          | 2 x 64, vocab 256           | 3 x 32, window 56         | unit and parity tests on CPU |
| `small`         | 8 x 512, vocab 32768        | 4 x 256, window 112       | CPU benchmarks |
| `demo`          | 4 x 256, bundled tokenizer  | 2 x 128, window 112       | the built-in demo model (CPU SFT + GRPO) |
| `qwen2_5_vl_3b` | 36 x 2048, vocab 151936     | 32 x 1280                 | Qwen/Qwen2.5-VL-3B-Instruct |
| `qwen2_5_vl_7b` | 28 x 3584, vocab 152064     | 32 x 1280                 | Qwen/Qwen2.5-VL-7B-Instruct (the base) |

The 3B / 7B presets reproduce the published `config.json` files field by field, so a model built from
them has exactly the parameter shapes of those checkpoints. The demo preset takes its vocabulary size and
special-token ids from the bundled tokenizer at call time, so the two can never drift apart.

Overrides: top-level `Qwen2_5_VLConfig` fields by name, and `text_config=` / `vision_config=` dicts
whose keys replace fields of the nested configs, e.g.
`get_preset("tiny", tie_word_embeddings=True, text_config={"num_hidden_layers": 1})`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from facialr1_jax.models.qwen2_5_vl.config import ConfigError, Qwen2_5_VLConfig, TextConfig, VisionConfig


def _tiny() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=TextConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10000.0, mrope_section=(2, 3, 3), max_position_embeddings=4096,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, max_window_layers=2),
        vision_config=VisionConfig(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=56,
            fullatt_block_indexes=(1,)),
        image_token_id=10, video_token_id=11, vision_start_token_id=8, vision_end_token_id=9, vision_token_id=7,
        tie_word_embeddings=False,
    )


def _small() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=TextConfig(
            vocab_size=32768, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=2, rope_theta=1_000_000.0, mrope_section=(8, 12, 12), max_position_embeddings=32768,
            bos_token_id=32700, eos_token_id=32701, pad_token_id=32702, max_window_layers=8),
        vision_config=VisionConfig(
            depth=4, hidden_size=256, intermediate_size=688, num_heads=4, out_hidden_size=512, window_size=112,
            fullatt_block_indexes=(1, 3)),
        image_token_id=32710, video_token_id=32711, vision_start_token_id=32708, vision_end_token_id=32709,
        vision_token_id=32707, tie_word_embeddings=False,
    )


def _demo() -> Qwen2_5_VLConfig:
    # Imported here, not at module top: the tokenizer lives in data/ and presets of every other size
    # must stay importable without it.
    from facialr1_jax.data import chat
    from facialr1_jax.data import tokenizer as bundled

    tok = bundled.load_tokenizer()
    special = bundled.special_token_ids(tok)
    vocab_size = len(tok)
    return Qwen2_5_VLConfig(
        text_config=TextConfig(
            vocab_size=vocab_size, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=10000.0, mrope_section=(8, 12, 12), max_position_embeddings=4096,
            # As in Qwen2.5-VL-Instruct: bos <|endoftext|>, eos <|im_end|> (end of the assistant turn).
            bos_token_id=special.endoftext, eos_token_id=special.eos, pad_token_id=special.pad, max_window_layers=4),
        vision_config=VisionConfig(
            depth=2, hidden_size=128, intermediate_size=352, num_heads=2, out_hidden_size=256, window_size=112,
            fullatt_block_indexes=(1,)),
        image_token_id=special.image_pad,
        # Videos are never fed to the demo model; without a <|video_pad|> token -1 matches no input id.
        video_token_id=_optional_token_id(tok, chat.VIDEO_PAD, default=-1),
        vision_start_token_id=special.vision_start,
        vision_end_token_id=special.vision_end,
        vision_token_id=_optional_token_id(tok, "<|vision_pad|>", default=None),
        tie_word_embeddings=True,
    )


def _optional_token_id(tokenizer, token: str, default: int | None) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != token):
        return default
    return int(token_id)


def _qwen2_5_vl_7b() -> Qwen2_5_VLConfig:
    # Qwen/Qwen2.5-VL-7B-Instruct config.json.
    return Qwen2_5_VLConfig(
        text_config=TextConfig(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
            mrope_section=(16, 24, 24), hidden_act="silu", max_position_embeddings=128000, bos_token_id=151643,
            eos_token_id=151645, pad_token_id=None, attention_dropout=0.0, use_sliding_window=False,
            sliding_window=32768, max_window_layers=28, initializer_range=0.02, use_cache=True),
        vision_config=VisionConfig(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
            temporal_patch_size=2, spatial_merge_size=2, in_channels=3, window_size=112,
            fullatt_block_indexes=(7, 15, 23, 31), hidden_act="silu", tokens_per_second=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        vision_token_id=151654, tie_word_embeddings=False,
    )


def _qwen2_5_vl_3b() -> Qwen2_5_VLConfig:
    # Qwen/Qwen2.5-VL-3B-Instruct config.json.
    return Qwen2_5_VLConfig(
        text_config=TextConfig(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
            mrope_section=(16, 24, 24), hidden_act="silu", max_position_embeddings=128000, bos_token_id=151643,
            eos_token_id=151645, pad_token_id=None, attention_dropout=0.0, use_sliding_window=False,
            sliding_window=32768, max_window_layers=70, initializer_range=0.02, use_cache=True),
        vision_config=VisionConfig(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
            temporal_patch_size=2, spatial_merge_size=2, in_channels=3, window_size=112,
            fullatt_block_indexes=(7, 15, 23, 31), hidden_act="silu", tokens_per_second=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        vision_token_id=151654, tie_word_embeddings=True,
    )


PRESETS: dict[str, Callable[[], Qwen2_5_VLConfig]] = {
    "tiny": _tiny,
    "small": _small,
    "demo": _demo,
    "qwen2_5_vl_3b": _qwen2_5_vl_3b,
    "qwen2_5_vl_7b": _qwen2_5_vl_7b,
}


def get_preset(name: str, **overrides: Any) -> Qwen2_5_VLConfig:
    """Returns the named config with `overrides` applied (see module docstring)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    if not overrides:
        return config
    nested = {}
    for key in ("text_config", "vision_config"):
        if key in overrides:
            changes = overrides.pop(key)
            current = getattr(config, key)
            if not isinstance(changes, dict):
                raise ConfigError(f"override {key}= must be a dict of field changes, got {type(changes).__name__}")
            known = {f.name for f in dataclasses.fields(current)}
            unknown = sorted(set(changes) - known)
            if unknown:
                raise ConfigError(f"unknown {key} fields in overrides of preset {name!r}: {unknown}")
            nested[key] = dataclasses.replace(current, **changes)
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config fields in overrides of preset {name!r}: {unknown}")
    return dataclasses.replace(config, **nested, **overrides)
