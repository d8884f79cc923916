"""Compact SFT targets (`data.target = "compact"`): built from a record's labels, parsed by the rewards
and metrics exactly as the labels say, encoded like description targets, and validated in configs."""

import io

import numpy as np
import pytest
from PIL import Image

from facialr1_jax import config_validation
from facialr1_jax.data import examples
from facialr1_jax.data import images as image_lib
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.fea import answers
from facialr1_jax.fea.records import FEARecord

TOKENIZER = tokenizer_lib.load_tokenizer()
SPECIAL = tokenizer_lib.special_token_ids(TOKENIZER)
DESCRIPTION = ("<think>The cheeks are raised (AU6) and the lip corners pulled up (AU12), with the lips "
               "parted (AU25); together they show happiness.</think>\n<answer>happiness</answer>")


def _record(**changes):
    fields = dict(id="r7", dataset="synthface", images=("a.png",), question="",
                  aus=("AU25", "AU12", "AU6"), labels=("happiness",), description=DESCRIPTION)
    fields.update(changes)
    return FEARecord(**fields)


def _png(seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _encoding(target):
    return examples.EncodingConfig(prompt_variant="compact", image=image_lib.ImageConfig(56 * 56, 112 * 112),
                                   max_prompt_tokens=400, max_target_tokens=160, target=target)


def test_compact_target_lists_the_aus_in_numeric_order_then_the_emotion():
    text = examples.compact_target(_record(aus=("AU10", "AU2", "AU25", "AU6")))
    assert text == "<think>AU2, AU6, AU10, AU25</think>\n<answer>happiness</answer>"


@pytest.mark.parametrize("aus,label", [(("AU25", "AU12", "AU6"), "happiness"), (("AU4", "AU15", "AU1"), "sadness"),
                                       (("AU14",), "contempt"), ((), "neutral")])
def test_rewards_and_metrics_read_back_exactly_the_labels(aus, label):
    record = _record(aus=aus, labels=(label,))
    text = examples.compact_target(record)
    assert answers.format_reward(text) == 1.0
    assert answers.accuracy_reward(text, label, mode="exact") == 1.0
    assert answers.eval_emotion_correct(text, label, normalize=False)
    assert answers.eval_aus(text) == frozenset(aus) == answers.reward_aus(text)
    # An empty AU set predicted for an empty truth: F1 is 0/0 (scored 0), so the AU reward is only
    # checked where the face has AUs.
    if aus:
        assert answers.au_reward(text, aus) == pytest.approx(1.0, abs=1e-12)


def test_a_face_without_aus_says_none_and_a_record_without_label_is_an_error():
    assert examples.compact_target(_record(aus=(), labels=("neutral",))) == \
        f"<think>{examples.NO_AUS_TEXT}</think>\n<answer>neutral</answer>"
    with pytest.raises(ValueError, match="record 'r7' has no emotion label"):
        examples.compact_target(_record(labels=()))
    assert not examples.has_target(_record(labels=()), "compact")
    neutral = _record(aus=(), labels=("neutral",))
    assert examples.has_target(neutral, "compact")  # a face of an AU-annotated set: "no AU" is a label
    assert not examples.has_target(neutral.replace(dataset="FER2013"), "compact")  # emotion-only set
    assert examples.has_target(neutral.replace(dataset="FER2013", aus=("AU12",)), "compact")
    assert examples.has_target(_record(description=""), "compact")
    assert not examples.has_target(_record(description=" "), "description")


def test_compact_sft_example_trains_on_the_compact_reply_after_the_same_prompt():
    image = _png()
    compact = examples.encode_sft_example(_record(description=""), TOKENIZER, _encoding("compact"), images=[image])
    long = examples.encode_sft_example(_record(), TOKENIZER, _encoding("description"), images=[image])
    assert compact.prompt_length == long.prompt_length
    np.testing.assert_array_equal(compact.input_ids[:compact.prompt_length], long.input_ids[:long.prompt_length])
    np.testing.assert_array_equal(compact.pixel_values, long.pixel_values)
    trained = compact.input_ids[compact.label_mask > 0]
    assert trained[-1] == SPECIAL.eos
    assert TOKENIZER.decode(trained[:-1]) == "<think>AU6, AU12, AU25</think>\n<answer>happiness</answer>"
    assert compact.label_mask.sum() < long.label_mask.sum() / 2
    assert compact.label_mask[:compact.prompt_length].sum() == 0


def test_unknown_targets_are_errors_in_the_encoding_and_the_config():
    with pytest.raises(ValueError, match="target 'summary' is not one of"):
        examples.EncodingConfig(target="summary")
    with pytest.raises(ValueError, match="target 'summary' is not one of"):
        examples.target_text(_record(), "summary")
    import configs.sft

    config = configs.sft.get_config()
    assert examples.EncodingConfig.from_config(config).target == "description"
    config.data.target = "compact"
    assert examples.EncodingConfig.from_config(config).target == "compact"
    config_validation.validate(config)
    config.data.target = "short"
    with pytest.raises(config_validation.ConfigError, match=r"config.data.target = 'short' is not one of"):
        config_validation.validate(config)
