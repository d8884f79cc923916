"""Token bytes and UTF-8 replacement: the text the rewards reconstruct is the tokenizer's decode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facialr1_jax.rewards import NotByteLevelError, build_byte_table, decode_completion
from facialr1_jax.rewards.byte_table import bytes_to_unicode, token_string_to_bytes
from facialr1_jax.rewards.utf8 import REPLACEMENT_CHARACTER, decode_replace, split_utf8

# Byte strings that exercise every branch of the maximal-subpart rule.
TRICKY = [
    b"", b"a", b"\x80", b"\xc0\xaf", b"\xc2", b"\xc2\x41", b"\xe0\x80\x80", b"\xe0\xa0", b"\xe0\xa0\x80",
    b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xef\xbf\xbd", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80", b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xff", b"\xe2\x82\xac\xe2\x82", b"a\xe2\x82\xacb",
]


@pytest.mark.parametrize("data", TRICKY)
def test_split_utf8_matches_python_decode(data):
    assert decode_replace(data) == data.decode("utf-8", "replace")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_split_utf8_matches_python_decode_on_random_bytes(data):
    assert decode_replace(data) == data.decode("utf-8", "replace")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30), st.integers(0, 30))
def test_split_utf8_tail_is_the_only_thing_a_cut_can_change(data, cut):
    """Decoding the part before a cut leaves at most a valid unfinished sequence pending; the
    characters before it are final, whatever bytes follow."""
    cut = min(cut, len(data))
    chars, tail = split_utf8(data[:cut])
    assert len(tail) <= 3
    full = data.decode("utf-8", "replace")
    assert full.startswith("".join(chars))
    if tail:
        assert (tail + data[cut:]).decode("utf-8", "replace") == full[len("".join(chars)) :]


def test_gpt2_byte_alphabet_is_a_bijection_with_printable_characters():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in mapping.values())
    assert mapping[ord(" ")] == "\u0120" and mapping[ord("a")] == "a"
    assert token_string_to_bytes("\u0120hello") == b" hello"
    assert token_string_to_bytes("a b") == b"a b"  # a space is outside the alphabet: raw UTF-8


@pytest.mark.parametrize("fixture", ["trained_tokenizer", "bundled_tokenizer"])
def test_byte_table_reproduces_tokenizer_decode(fixture, request):
    """Random id sequences (special and added tokens, multi-byte pieces, ids outside the
    vocabulary, masked positions) decode the same through the table and the tokenizer."""
    tokenizer = request.getfixturevalue(fixture)
    table = build_byte_table(tokenizer)
    assert table.vocab_size == len(tokenizer)
    special_ids = [i for i in range(table.vocab_size) if table.special[i]]
    assert special_ids and all(table.lengths[i] == 0 for i in special_ids)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in special_ids
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(-3, table.vocab_size + 5, size=int(rng.integers(0, 40))).tolist()
        mask = (rng.random(len(ids)) < 0.9).tolist()
        assert table.decode(ids, mask) == decode_completion(tokenizer, ids, mask)
    text = "<think>brows (AU4) é 日本 😀 \u212a</think>\n<answer>fear</answer>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert table.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True) == text


def test_non_byte_level_tokenizer_is_rejected():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    with pytest.raises(NotByteLevelError, match="not 'ByteLevel'"):
        build_byte_table(tokenizer)
    with pytest.raises(NotByteLevelError, match="no `tokenizers` backend"):
        build_byte_table(object())


def test_decode_rejects_mismatched_mask(trained_tokenizer):
    table = build_byte_table(trained_tokenizer)
    with pytest.raises(ValueError, match="mask has 1 entries but ids has 2"):
        table.decode([1, 2], [True])
    with pytest.raises(ValueError, match="mask has 1 entries but ids has 2"):
        decode_completion(trained_tokenizer, [1, 2], [True])
    assert REPLACEMENT_CHARACTER == "\ufffd"
