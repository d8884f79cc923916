"""The bundled tokenizer and the shared Qwen2.5-VL chat format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facialr1_jax.data import build_tokenizer, chat, expressions, reasoning
from facialr1_jax.data.tokenizer import BUNDLED_TOKENIZER_DIR, TAG_TOKENS, load_tokenizer, special_token_ids
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.prompts import SYSTEM_PROMPT, build_instruction


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_bundled_tokenizer_loads_with_auto_tokenizer(tokenizer):
    from transformers import AutoTokenizer

    direct = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER_DIR), local_files_only=True)
    assert len(direct) == len(tokenizer) == 1536
    assert direct.encode("The brows are lowered (AU4).") == tokenizer.encode("The brows are lowered (AU4).")
    assert tokenizer.eos_token == chat.IM_END and tokenizer.pad_token == chat.ENDOFTEXT
    files = {path.name for path in BUNDLED_TOKENIZER_DIR.iterdir()}
    assert "tokenizer.json" in files and sum(path.stat().st_size for path in BUNDLED_TOKENIZER_DIR.iterdir()) < 200_000


def test_special_tokens_are_single_ids(tokenizer):
    ids = special_token_ids(tokenizer)
    assert ids.eos == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.pad == ids.endoftext == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    every = [tokenizer.convert_tokens_to_ids(token) for token in chat.QWEN_SPECIAL_TOKENS]
    assert len(set(every)) == len(chat.QWEN_SPECIAL_TOKENS)
    assert every == sorted(every)  # Qwen's order, at the end of the vocabulary
    assert min(every) == len(tokenizer) - len(chat.QWEN_SPECIAL_TOKENS) - len(TAG_TOKENS)
    for token in chat.QWEN_SPECIAL_TOKENS + TAG_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]


def test_tags_and_emotion_words_are_compact(tokenizer):
    for emotion in EMOTIONS:
        assert len(tokenizer.encode(emotion, add_special_tokens=False)) == 1, emotion
        assert len(tokenizer.encode(" " + emotion, add_special_tokens=False)) == 1, emotion
        answer = f"<answer>{emotion}</answer>"
        assert len(tokenizer.encode(answer, add_special_tokens=False)) == 3
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(200):
        face = expressions.sample_expression(rng)
        text = reasoning.write_description(face.emotion, face.aus, rng, intensities=face.intensities)
        ratios.append(len(tokenizer.encode(text, add_special_tokens=False)) / len(text.split()))
    assert np.mean(ratios) < 1.7, np.mean(ratios)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_every_string_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_round_trip_of_awkward_text(tokenizer):
    for text in ("héllo wörld 😀 ǅ", "\x00\x01\t\r\n  \u2028 x", "AU01 AU12 12C R14", "e\u0301 vs é", " " * 7):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("num_images", [0, 1, 2])
@pytest.mark.parametrize("system", [SYSTEM_PROMPT, "You analyse faces."])
def test_chat_template_matches_render_prompt(tokenizer, num_images, system):
    instruction = build_instruction("Which emotion is shown?", EMOTIONS, "compact")
    messages = chat.chat_messages(instruction, num_images=num_images, system=system)
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert templated == chat.render_prompt(instruction, num_images=num_images, system=system)


def test_render_prompt_is_the_qwen_layout(tokenizer):
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the face.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chat.render_prompt("Describe the face.") == expected
    # Without a system turn Qwen's template inserts the same default system line.
    templated = tokenizer.apply_chat_template(
        chat.chat_messages("Describe the face.", system=None), add_generation_prompt=True, tokenize=False
    )
    assert templated == expected
    assert tokenizer.chat_template == chat.QWEN2_5_VL_CHAT_TEMPLATE


def test_full_conversation_round_trips(tokenizer):
    instruction = build_instruction(None, EMOTIONS, "full")
    answer = "<think>The lip corners are pulled up (AU12).</think>\n<answer>happiness</answer>"
    prompt_ids = chat.encode_prompt(tokenizer, instruction, [1])
    completion_ids = chat.encode_completion(tokenizer, answer)
    text = tokenizer.decode(prompt_ids + completion_ids, skip_special_tokens=False)
    assert text == chat.render_prompt(instruction) + answer + chat.IM_END
    assert completion_ids[-1] == special_token_ids(tokenizer).eos
    assert tokenizer.decode(completion_ids[:-1]) == answer
    templated = tokenizer.apply_chat_template(
        chat.chat_messages(instruction) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    assert templated == text + "\n"


@pytest.mark.parametrize("counts", [[16], [4, 9], [1, 1, 1]])
def test_encode_prompt_expands_image_pads(tokenizer, counts):
    ids = special_token_ids(tokenizer)
    encoded = chat.encode_prompt(tokenizer, "What emotion is this?", counts)
    assert encoded.count(ids.image_pad) == sum(counts)
    starts = [i for i, token in enumerate(encoded) if token == ids.vision_start]
    assert len(starts) == len(counts)
    for start, count in zip(starts, counts):
        assert encoded[start + 1 : start + 1 + count] == [ids.image_pad] * count
        assert encoded[start + 1 + count] == ids.vision_end
    collapsed = chat.encode_prompt(tokenizer, "What emotion is this?", [1] * len(counts))
    assert len(encoded) - len(collapsed) == sum(counts) - len(counts)
    assert tokenizer.decode(collapsed) == chat.render_prompt("What emotion is this?", num_images=len(counts))


def test_merged_image_tokens():
    assert chat.merged_image_tokens((1, 8, 8)) == 16  # a 112 px face: 8 x 8 patches of 14 px
    assert chat.merged_image_tokens((2, 16, 12)) == 96
    for bad in ((1, 7, 8), (0, 8, 8), (8, 8)):
        with pytest.raises(ValueError, match="grid_thw"):
            chat.merged_image_tokens(bad)


def test_control_strings_in_text_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="image_pad"):
        chat.render_prompt("look <|image_pad|> here")
    with pytest.raises(ValueError, match="im_end"):
        chat.encode_completion(tokenizer, "done<|im_end|>")
    with pytest.raises(ValueError, match=">= 1"):
        chat.encode_prompt(tokenizer, "x", [0])
    with pytest.raises(ValueError, match="num_images"):
        chat.render_prompt("x", num_images=-1)


def test_tokenizer_without_qwen_tokens_is_named(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain.add_tokens(["a", "b"])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=plain)
    with pytest.raises(ValueError, match="endoftext"):
        special_token_ids(wrapped)
    with pytest.raises(FileNotFoundError, match="holds none"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_bundled_files_are_reproducible(tmp_path):
    """The build script regenerates exactly the shipped vocabulary and merges."""
    build_tokenizer.build_tokenizer(tmp_path)
    fresh = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    shipped = json.loads((BUNDLED_TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    stale = "the bundled tokenizer is stale: run python -m facialr1_jax.data.build_tokenizer"
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"], stale
    assert fresh["model"]["merges"] == shipped["model"]["merges"], stale
    assert fresh["added_tokens"] == shipped["added_tokens"], (
        "the bundled tokenizer is stale: run python -m facialr1_jax.data.build_tokenizer"
    )
