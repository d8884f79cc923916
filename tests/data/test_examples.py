"""Records -> prompt and SFT examples: chat layout, image tokens, label masks, truncation, errors."""

import io

import numpy as np
import pytest
from PIL import Image

from facialr1_jax.data import chat, examples
from facialr1_jax.data import images as image_lib
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.fea.profiles import labels_for
from facialr1_jax.fea.prompts import build_instruction
from facialr1_jax.fea.records import FEARecord

TOKENIZER = tokenizer_lib.load_tokenizer()
SPECIAL = tokenizer_lib.special_token_ids(TOKENIZER)
DESCRIPTION = ("<think>The inner brows are raised (AU1) and the lip corners are pulled down (AU15); together "
               "they show sadness.</think>\n<answer>sadness</answer>")


def _png(height=112, width=140, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _record(**changes):
    fields = dict(id="r1", dataset="RAF-DB", images=("a.png",), question="<image>Which emotion is this?",
                  aus=("AU1", "AU15"), labels=("sadness",), description=DESCRIPTION)
    fields.update(changes)
    return FEARecord(**fields)


def _encoding(**changes):
    fields = dict(prompt_variant="compact", image=image_lib.ImageConfig(min_pixels=56 * 56, max_pixels=112 * 140),
                  max_prompt_tokens=400, max_target_tokens=160, loss_on="assistant")
    fields.update(changes)
    return examples.EncodingConfig(**fields)


def test_prompt_example_is_the_chat_prompt_with_expanded_image_tokens():
    image = _png()
    prompt = examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), images=[image])
    expected_pixels, expected_grid = _encoding().image.preprocess(image)
    np.testing.assert_array_equal(prompt.pixel_values, expected_pixels)
    np.testing.assert_array_equal(prompt.image_grid_thw, [expected_grid])
    image_tokens = int(np.prod(expected_grid)) // 4
    assert int(np.sum(prompt.input_ids == SPECIAL.image_pad)) == image_tokens == 20  # 112 x 140 px -> 8 x 10 patches

    instruction = build_instruction("Which emotion is this?", labels_for("RAF-DB"), "compact")
    assert prompt.instruction == instruction
    assert "contempt" not in instruction  # RAF-DB's own label list, not all eight emotions
    collapsed = [t for i, t in enumerate(prompt.input_ids.tolist())
                 if t != SPECIAL.image_pad or prompt.input_ids[i - 1] != SPECIAL.image_pad]
    assert TOKENIZER.decode(collapsed) == chat.render_prompt(instruction)


def test_images_are_read_from_the_image_root(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(seed=3))
    from_root = examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), image_root=str(tmp_path))
    given = examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), images=[_png(seed=3)])
    np.testing.assert_array_equal(from_root.pixel_values, given.pixel_values)
    np.testing.assert_array_equal(from_root.input_ids, given.input_ids)
    with pytest.raises(ValueError, match="climbs out of the image root"):
        examples.encode_prompt_example(_record(images=("../a.png",)), TOKENIZER, _encoding(), image_root=str(tmp_path))


def test_sft_example_trains_on_the_reply_and_end_of_turn_only():
    example = examples.encode_sft_example(_record(), TOKENIZER, _encoding(), images=[_png()])
    prompt = examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), images=[_png()])
    np.testing.assert_array_equal(example.input_ids[: example.prompt_length], prompt.input_ids)
    trained = example.input_ids[example.label_mask > 0]
    assert trained[-1] == SPECIAL.eos
    assert TOKENIZER.decode(trained[:-1]) == DESCRIPTION
    assert example.label_mask[: example.prompt_length].sum() == 0
    assert not example.truncated
    # The same conversation through the tokenizer's own chat template (Qwen2.5-VL's) starts identically.
    messages = chat.chat_messages(prompt.instruction) + [{"role": "assistant", "content": DESCRIPTION}]
    template_text = TOKENIZER.apply_chat_template(messages, tokenize=False)
    ours = TOKENIZER.decode([t for i, t in enumerate(example.input_ids.tolist())
                             if t != SPECIAL.image_pad or example.input_ids[i - 1] != SPECIAL.image_pad])
    assert template_text.startswith(ours)


def test_loss_on_all_trains_on_every_token_but_image_placeholders():
    example = examples.encode_sft_example(_record(), TOKENIZER, _encoding(loss_on="all"), images=[_png()])
    np.testing.assert_array_equal(example.label_mask, (example.input_ids != SPECIAL.image_pad).astype(np.float32))
    assert example.label_mask.sum() < len(example.input_ids)


def test_long_replies_are_truncated_and_long_prompts_are_errors():
    short = examples.encode_sft_example(_record(), TOKENIZER, _encoding(max_target_tokens=7), images=[_png()])
    assert short.truncated and len(short.input_ids) == short.prompt_length + 7
    assert short.label_mask.sum() == 7
    with pytest.raises(ValueError, match=r"record 'r1': the prompt has \d+ tokens .*max_prompt_tokens = 30"):
        examples.encode_prompt_example(_record(), TOKENIZER, _encoding(max_prompt_tokens=30), images=[_png()])


def test_records_without_description_or_with_broken_images_are_clear_errors():
    with pytest.raises(ValueError, match="record 'r1' has no description"):
        examples.encode_sft_example(_record(description=""), TOKENIZER, _encoding(), images=[_png()])
    with pytest.raises(image_lib.ImageLoadError, match="record 'r1', image 'a.png'"):
        examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), images=[b"not an image"])
    with pytest.raises(ValueError, match="lists 1 images but 2 were given"):
        examples.encode_prompt_example(_record(), TOKENIZER, _encoding(), images=[_png(), _png()])


def test_encoding_config_from_run_config_and_validation():
    import configs.sft

    config = configs.sft.get_config()
    config.sft.loss_on = "all"
    encoding = examples.EncodingConfig.from_config(config)
    assert encoding.loss_on == "all" and encoding.prompt_variant == config.data.prompt_variant
    assert encoding.max_length == config.data.max_prompt_tokens + config.data.max_target_tokens
    with pytest.raises(ValueError, match="loss_on 'prompt'"):
        examples.EncodingConfig(loss_on="prompt")
