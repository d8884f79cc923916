"""Dataset profiles (docs/METHOD.md 2.4: label sets and evaluated AU subsets)."""

import dataclasses

import pytest

from facialr1_jax.fea.aus import FACS_AU_NAMES
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.profiles import (
    PROFILES,
    DatasetProfile,
    UnknownDatasetError,
    find_profile,
    get_profile,
    labels_for,
)

SEVEN = {"anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}


def _aus(*numbers):
    return {f"AU{n}" for n in numbers}


def test_all_required_profiles_exist():
    assert set(PROFILES) == {
        "DISFA",
        "BP4D",
        "RAF-AU",
        "FABA",
        "FER2013",
        "AffectNet",
        "RAF-DB",
        "FEA-20K",
        "synthface",
    }
    for name, profile in PROFILES.items():
        assert profile.name == name


@pytest.mark.parametrize(
    "name, labels",
    [
        ("FABA", SEVEN),
        ("FER2013", SEVEN),
        ("RAF-DB", SEVEN),
        ("AffectNet", set(EMOTIONS)),
        ("RAF-AU", SEVEN - {"neutral"}),
        ("DISFA", set()),
        ("BP4D", set()),
        ("synthface", set(EMOTIONS)),
    ],
)
def test_label_sets_follow_method_1_2(name, labels):
    profile = get_profile(name)
    assert set(profile.labels) == labels
    assert list(profile.labels) == [e for e in EMOTIONS if e in labels], (
        "labels keep EMOTIONS order"
    )
    assert profile.has_emotion_labels == bool(labels)


def test_evaluated_au_subsets_follow_method_1_3():
    assert set(get_profile("DISFA").eval_aus) == _aus(1, 2, 4, 6, 9, 12, 25, 26)
    assert set(get_profile("DISFA").annotated_aus) == _aus(1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
    assert set(get_profile("BP4D").eval_aus) == _aus(1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
    assert set(get_profile("FABA").eval_aus) == _aus(1, 2, 4, 5, 6, 10, 12, 17, 24, 25, 26, 43)
    assert set(get_profile("synthface").eval_aus) == _aus(
        1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 20, 22, 23, 24, 25, 26, 27, 43
    )
    assert get_profile("RAF-AU").eval_aus is None
    for emotion_only in ("FER2013", "AffectNet", "RAF-DB"):
        profile = get_profile(emotion_only)
        assert profile.eval_aus == () and not profile.is_au_benchmark


def test_profile_au_lists_are_canonical_sorted_and_inside_the_annotation():
    for profile in PROFILES.values():
        for aus in (profile.eval_aus, profile.annotated_aus):
            if aus:
                assert all(au in FACS_AU_NAMES for au in aus)
                assert [int(a[2:]) for a in aus] == sorted(int(a[2:]) for a in aus)
                assert len(set(aus)) == len(aus)
        if profile.eval_aus and profile.annotated_aus:
            assert set(profile.eval_aus) <= set(profile.annotated_aus)


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("DISFA").name = "x"
    assert isinstance(get_profile("DISFA"), DatasetProfile)


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("RAF-DB", "RAF-DB"),
        ("rafdb", "RAF-DB"),
        ("raf_db", "RAF-DB"),
        ("Raf Db", "RAF-DB"),
        ("raf-au", "RAF-AU"),
        ("fer-2013", "FER2013"),
        ("affectnet", "AffectNet"),
        ("FABA-Bench", "FABA"),
        ("faba_instruct", "FABA"),
        ("fea20k", "FEA-20K"),
        ("SynthFace", "synthface"),
        ("bp4d", "BP4D"),
    ],
)
def test_lookup_ignores_case_and_punctuation(spelling, name):
    assert get_profile(spelling).name == name
    assert find_profile(spelling).name == name


def test_unknown_dataset_error_lists_known_names():
    with pytest.raises(UnknownDatasetError) as caught:
        get_profile("CK+")
    message = str(caught.value)
    assert "'CK+'" in message
    for name in PROFILES:
        assert name in message
    assert isinstance(caught.value, KeyError)
    assert find_profile("CK+") is None
    assert find_profile(None) is None


def test_labels_for_prompts():
    assert labels_for("RAF-DB") == get_profile("RAF-DB").labels
    assert "contempt" not in labels_for("fer2013")
    assert labels_for("RAF-AU") == get_profile("RAF-AU").labels
    # AU-only and unknown datasets still need an allowed list: all eight (documented decision)
    assert labels_for("DISFA") == EMOTIONS
    assert labels_for("some new set") == EMOTIONS
    assert labels_for(None) == EMOTIONS


def test_au_eval_list_derives_from_ground_truth_when_no_protocol_list():
    raf_au = get_profile("RAF-AU")
    truth = [["AU12", "AU6"], [], ["AU4", "AU1"], ["AU12"]]
    assert raf_au.au_eval_list(truth) == ("AU1", "AU4", "AU6", "AU12")
    assert raf_au.au_eval_list([]) == ()
    disfa = get_profile("DISFA")
    assert disfa.au_eval_list(truth) == disfa.eval_aus


def test_synthface_profile_evaluates_exactly_the_rendered_aus():
    from facialr1_jax.data.synthface import RENDERED_AUS

    assert set(get_profile("synthface").eval_aus) == set(RENDERED_AUS)
