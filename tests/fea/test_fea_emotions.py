"""Emotion vocabulary and label normalisation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facialr1_jax.fea.emotions import (
    EMOTION_SYNONYMS,
    EMOTIONS,
    UnknownLabelError,
    clean_label_text,
    is_emotion,
    normalize_emotion,
    try_normalize_emotion,
)


def test_vocabulary_is_the_eight_nouns_of_method_1_2():
    assert set(EMOTIONS) == {
        "anger",
        "contempt",
        "disgust",
        "fear",
        "happiness",
        "neutral",
        "sadness",
        "surprise",
    }
    assert len(EMOTIONS) == 8
    assert list(EMOTIONS) == sorted(EMOTIONS)


@pytest.mark.parametrize(
    "text, expected",
    [
        # the adjective -> noun table (docs/METHOD.md 2.2)
        ("angry", "anger"),
        ("happy", "happiness"),
        ("sad", "sadness"),
        ("surprised", "surprise"),
        ("fearful", "fear"),
        ("disgusted", "disgust"),
        ("contemptuous", "contempt"),
        # everyday synonyms the brief asks for
        ("afraid", "fear"),
        ("scared", "fear"),
        ("calm", "neutral"),
        ("none", "neutral"),
        ("neutrality", "neutral"),
        # case, whitespace, punctuation, wrapping
        ("Happy", "happiness"),
        ("  SURPRISE \n", "surprise"),
        ("happiness.", "happiness"),
        ("fear!?", "fear"),
        ("'sad'", "sadness"),
        ('"Anger".', "anger"),
        ("(disgust).", "disgust"),
        ("**contempt**", "contempt"),
        ("[neutral]", "neutral"),
        ("No  Emotion", "neutral"),
        ("ＨＡＰＰＹ", "happiness"),  # full-width letters fold under NFKC
    ],
)
def test_normalize_emotion_maps_spellings(text, expected):
    assert normalize_emotion(text) == expected
    assert try_normalize_emotion(text) == expected


@pytest.mark.parametrize(
    "text", ["happyy", "joyous", "", "   ", "...", "happy sad", "ang", "-anger"]
)
def test_unknown_labels_raise_naming_the_text(text):
    with pytest.raises(UnknownLabelError) as caught:
        normalize_emotion(text)
    assert repr(text) in str(caught.value)
    assert caught.value.text == text
    assert isinstance(caught.value, ValueError)
    assert try_normalize_emotion(text) is None


@pytest.mark.parametrize("value", [None, 3, ["happy"], b"happy"])
def test_non_strings_are_not_emotions(value):
    assert try_normalize_emotion(value) is None
    with pytest.raises(UnknownLabelError):
        normalize_emotion(value)


def test_every_synonym_targets_a_canonical_noun_and_every_noun_maps_to_itself():
    assert set(EMOTION_SYNONYMS.values()) == set(EMOTIONS)
    for emotion in EMOTIONS:
        assert normalize_emotion(emotion) == emotion
    for spelling in EMOTION_SYNONYMS:
        assert clean_label_text(spelling) == spelling, "table keys must already be cleaned"


def test_is_emotion_accepts_only_canonical_spelling():
    assert is_emotion("fear")
    assert not is_emotion("Fear")
    assert not is_emotion("afraid")
    assert not is_emotion(None)


@given(
    st.sampled_from(sorted(EMOTION_SYNONYMS)),
    st.sampled_from(["", " ", "\n", "\t "]),
    st.sampled_from(["", ".", "!", "?!", "..."]),
    st.booleans(),
)
def test_normalisation_ignores_case_padding_and_trailing_punctuation(
    spelling, padding, tail, upper
):
    text = padding + (spelling.upper() if upper else spelling) + tail + padding
    assert normalize_emotion(text) == EMOTION_SYNONYMS[spelling]


@given(st.text(max_size=20))
def test_normalisation_is_idempotent_and_total(text):
    result = try_normalize_emotion(text)
    assert result is None or result in EMOTIONS
    if result is not None:
        assert normalize_emotion(result) == result
    assert clean_label_text(clean_label_text(text)) == clean_label_text(text)
