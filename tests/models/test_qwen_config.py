"""Config: both config.json layouts, round trips through transformers, presets, validation."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.models import ConfigError, Qwen2_5_VL, Qwen2_5_VLConfig, get_preset

# The published config.json files of Qwen/Qwen2.5-VL-{3B,7B}-Instruct (flat layout, transformers 4.x).
PUBLISHED_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}
PUBLISHED_3B = {
    **PUBLISHED_7B, "hidden_size": 2048, "intermediate_size": 11008, "max_window_layers": 70,
    "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "tie_word_embeddings": True,
    "vocab_size": 151936, "vision_config": {**PUBLISHED_7B["vision_config"], "out_hidden_size": 2048},
}


@pytest.mark.parametrize("name, published", [("qwen2_5_vl_7b", PUBLISHED_7B), ("qwen2_5_vl_3b", PUBLISHED_3B)])
def test_large_presets_equal_the_published_configs(name, published):
    assert get_preset(name) == Qwen2_5_VLConfig.from_hf_dict(published)


@pytest.mark.torch
@pytest.mark.parametrize("name, published", [("qwen2_5_vl_7b", PUBLISHED_7B), ("qwen2_5_vl_3b", PUBLISHED_3B)])
def test_large_preset_parameter_shapes_equal_transformers(name, published):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLConfig as HFConfig
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from facialr1_jax.models.hf_io import canonical_hf_name, hf_shape, tensor_specs

    # Full widths, two layers and two vision blocks: every tensor shape of the checkpoint appears, and
    # the layer counts are covered by the config equality above (tracing 700 parameters takes seconds).
    published = {**published, "num_hidden_layers": 2,
                 "vision_config": {**published["vision_config"], "depth": 2, "fullatt_block_indexes": [1]}}
    with torch.device("meta"), no_init_weights():  # shapes only: no memory, no initialisation
        reference = Qwen2_5_VLForConditionalGeneration(HFConfig(**published))
    expected = {canonical_hf_name(k): tuple(v.shape) for k, v in reference.state_dict().items()}
    config = get_preset(name, text_config={"num_hidden_layers": 2},
                        vision_config={"depth": 2, "fullatt_block_indexes": (1,)})
    assert config == Qwen2_5_VLConfig.from_hf_dict(published)
    abstract = nnx.eval_shape(lambda: Qwen2_5_VL(config))
    variables = {tuple(p): v for p, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Variable)}
    ours = {s.hf_name: hf_shape(s, tuple(variables[s.path].get_value().shape), config) for s in tensor_specs(config)}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert ours == expected


def test_transformers5_layout_round_trips_through_transformers():
    from transformers import Qwen2_5_VLConfig as HFConfig

    ours = get_preset("tiny")
    hf = HFConfig(**ours.to_hf_dict())
    assert Qwen2_5_VLConfig.from_hf_dict(hf.to_dict()) == ours
    # ... and what transformers itself would write for this config reads back the same.
    assert Qwen2_5_VLConfig.from_hf_dict(json.loads(hf.to_json_string())) == ours


def test_published_layout_reads_like_transformers_reads_it():
    from transformers import Qwen2_5_VLConfig as HFConfig

    hf = HFConfig(**PUBLISHED_7B)
    ours = Qwen2_5_VLConfig.from_hf_dict(PUBLISHED_7B)
    text, vision = hf.text_config, hf.vision_config
    assert ours.text_config.rope_theta == text.rope_parameters["rope_theta"]
    assert list(ours.text_config.mrope_section) == list(text.rope_parameters["mrope_section"])
    assert ours.text_config.num_key_value_heads == text.num_key_value_heads
    assert ours.vision_config.out_hidden_size == vision.out_hidden_size
    assert list(ours.vision_config.fullatt_block_indexes) == list(vision.fullatt_block_indexes)
    assert ours.tie_word_embeddings == hf.tie_word_embeddings


def test_pre_v5_tie_word_embeddings_inside_text_config_is_honoured():
    raw = get_preset("tiny").to_hf_dict()
    raw["tie_word_embeddings"] = False
    raw["text_config"]["tie_word_embeddings"] = True
    assert Qwen2_5_VLConfig.from_hf_dict(raw).tie_word_embeddings


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["text_config"].update(num_attention_heads=5), "divisible by num_attention_heads"),
    (lambda d: d["text_config"].update(num_key_value_heads=3), "num_key_value_heads"),
    (lambda d: d["text_config"]["rope_parameters"].update(mrope_section=[2, 2, 2]), "mrope_section"),
    (lambda d: d["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope_type"),
    (lambda d: d["text_config"].update(use_sliding_window=True), "use_sliding_window"),
    (lambda d: d["vision_config"].update(fullatt_block_indexes=[5]), "fullatt_block_indexes"),
    (lambda d: d["vision_config"].update(window_size=50), "window_size"),
    (lambda d: d["vision_config"].update(out_hidden_size=32), "out_hidden_size"),
    (lambda d: d.update(image_token_id=100000), "image_token_id"),
    (lambda d: d.update(model_type="llava"), "model_type"),
])
def test_bad_configs_fail_naming_the_field(mutate, message):
    raw = get_preset("tiny").to_hf_dict()
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        Qwen2_5_VLConfig.from_hf_dict(raw)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen2_5_VLConfig.from_pretrained_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        Qwen2_5_VLConfig.from_pretrained_dir(tmp_path)


def test_small_preset_sizes():
    small = get_preset("small")
    assert small.text_config.num_hidden_layers == 8 and small.text_config.hidden_size == 512
    assert small.text_config.vocab_size >= 32000 and small.vision_config.depth == 4


def test_preset_overrides():
    config = get_preset("tiny", tie_word_embeddings=True, text_config={"num_hidden_layers": 1},
                        vision_config={"depth": 2})
    assert config.tie_word_embeddings and config.text_config.num_hidden_layers == 1
    assert config.vision_config.depth == 2
    assert dataclasses.replace(config, tie_word_embeddings=False) != get_preset("tiny")  # depth/layers changed
    with pytest.raises(ConfigError, match="unknown config fields"):
        get_preset("tiny", hidden_size=3)
    with pytest.raises(ConfigError, match="unknown text_config fields"):
        get_preset("tiny", text_config={"layers": 3})
    with pytest.raises(KeyError, match="unknown model preset"):
        get_preset("huge")


def _check_demo_against(tokenizer):
    from facialr1_jax.data.tokenizer import special_token_ids

    special = special_token_ids(tokenizer)
    config = get_preset("demo")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.image_token_id == special.image_pad
    assert config.vision_start_token_id == special.vision_start
    assert config.vision_end_token_id == special.vision_end
    assert config.text_config.eos_token_id == special.eos
    assert config.text_config.pad_token_id == special.pad
    text, vision = config.text_config, config.vision_config
    assert text.num_hidden_layers == 4 and text.hidden_size == 256
    assert vision.depth == 2 and vision.hidden_size == 128
    return config


def test_demo_preset_follows_whatever_tokenizer_is_bundled(monkeypatch):
    # A stand-in tokenizer with a different vocabulary size and id layout: nothing may be hard-coded.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from facialr1_jax.data import chat
    from facialr1_jax.data import tokenizer as bundled

    words = ["<unk>", "a", "b", "c"] + [f"w{i}" for i in range(300)]
    specials = [chat.ENDOFTEXT, chat.IM_START, chat.IM_END, chat.VISION_START, chat.VISION_END, chat.IMAGE_PAD]
    stand_in = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")),
        unk_token="<unk>", pad_token=chat.ENDOFTEXT, additional_special_tokens=specials)
    monkeypatch.setattr(bundled, "load_tokenizer", lambda path=None: stand_in)
    config = _check_demo_against(stand_in)
    assert config.text_config.vocab_size == len(words) + len(specials)
    assert config.video_token_id == -1  # the stand-in has no <|video_pad|>


def test_demo_preset_with_the_real_bundled_tokenizer():
    from facialr1_jax.data import tokenizer as bundled

    if not bundled.BUNDLED_TOKENIZER_DIR.is_dir():
        pytest.skip(f"the bundled tokenizer files are not built yet ({bundled.BUNDLED_TOKENIZER_DIR})")
    _check_demo_against(bundled.load_tokenizer())


def test_tiny_preset_builds_and_runs_text():
    from facialr1_jax.models import init_model

    model = init_model(get_preset("tiny"))
    logits = model(np.array([[1, 20, 30]]))
    assert logits.shape == (1, 3, 256) and bool(jax.numpy.isfinite(logits).all())
