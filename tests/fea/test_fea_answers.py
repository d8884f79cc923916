"""The reference reward and metric semantics (docs/METHOD.md sections 6 and 9) and the stage 3
check (8.3).

Expected values are worked out by hand from the docs/METHOD.md rules, and the property tests compare
the regex-based oracle against independent character-scanning implementations written here.
"""

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facialr1_jax.fea.answers import (
    WHITESPACE_CHARACTERS,
    accuracy_reward,
    au_f1,
    au_mentions,
    au_reward,
    binary_f1,
    check_synthesis,
    eval_aus,
    eval_emotion,
    eval_emotion_correct,
    extract_answer_last,
    extract_think_first,
    format_reward,
    inspect_synthesis,
    reward_aus,
    total_reward,
)
from facialr1_jax.fea.emotions import EMOTIONS

TOL = 1e-12


def answer(think: str, emotion: str) -> str:
    return f"<think>{think}</think>\n<answer>{emotion}</answer>"


# ----------------------------------------------------------------------------------- format
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("<think>a</think>\n<answer>b</answer>", 1.0),
        ("<think>a</think> \n\t \n<answer>b</answer>", 1.0),
        ("<think></think><answer></answer>", 1.0),  # empty parts still match the pattern
        ("<think>line 1\nline 2</think><answer>fear\n</answer>", 1.0),  # dot matches newline
        ("<think>a</think>\u00a0<answer>b</answer>", 1.0),  # \s is Unicode whitespace
        ("<think>a</think>\u2003<answer>b</answer>", 1.0),
        (" <think>a</think><answer>b</answer>", 0.0),  # text before
        ("Sure! <think>a</think><answer>b</answer>", 0.0),
        ("<think>a</think><answer>b</answer> ", 0.0),  # text after, even whitespace
        ("<think>a</think><answer>b</answer>\n", 0.0),
        ("<think>a</think><answer>b</answer>.", 0.0),
        ("<THINK>a</THINK><answer>b</answer>", 0.0),  # tags are case-sensitive here
        ("<think>a</think><Answer>b</Answer>", 0.0),
        ("<think>a</think>x<answer>b</answer>", 0.0),  # only whitespace between the parts
        ("<think>a</think><answer>b", 0.0),
        ("<think>a<answer>b</answer>", 0.0),
        ("<answer>b</answer><think>a</think>", 0.0),
        ("<think>a</think>", 0.0),
        ("<answer>b</answer>", 0.0),
        ("", 0.0),
        # repeated and nested tags: the lazy groups backtrack across them
        ("<think>a</think><think>b</think><answer>c</answer>", 1.0),
        ("<think>a</think>x</think><answer>b</answer>", 1.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", 1.0),
        ("<think><think>a</think></think><answer>b</answer>", 1.0),
        ("<think>a</think><answer>b</answer>tail</answer>", 1.0),
        ("<think>a</think><answer>b</answer>tail", 0.0),
        ("<think></answer></think><answer></answer>", 1.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def _scan_format(text: str) -> float:
    """Independent statement of the format rule: starts with <think>, ends with </answer>, and
    some </think> after the opening tag is followed by whitespace and an <answer> whose end
    leaves room for the closing </answer>."""
    opening, closing = "<think>", "</answer>"
    if not (text.startswith(opening) and text.endswith(closing)):
        return 0.0
    last_answer_start = len(text) - len(closing) - len("<answer>")
    for index in range(len(opening), len(text)):
        if text.startswith("</think>", index):
            cursor = index + len("</think>")
            while cursor < len(text) and text[cursor] in WHITESPACE_CHARACTERS:
                cursor += 1
            if text.startswith("<answer>", cursor) and cursor <= last_answer_start:
                return 1.0
    return 0.0


_FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "<THINK>",
        "</Think>",
        "<ANSWER>",
        " ",
        "\n",
        "\u00a0",
        "x",
        "AU1",
        "AU12",
        "au4",
        "AU01",
        "AU120",
        "happiness",
        "Happy",
        "fear",
        ",",
        ";",
        "<think",
        "answer>",
        "İ",
        "\u212a",
    ]
)
_TEXTS = st.lists(_FRAGMENTS, max_size=14).map("".join)


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_format_reward_matches_an_independent_scanner(text):
    assert format_reward(text) == _scan_format(text)


@given(st.characters())
def test_whitespace_between_parts_is_exactly_str_isspace(character):
    text = f"<think>a</think>{character}<answer>b</answer>"
    assert format_reward(text) == (1.0 if character.isspace() else 0.0)


def test_whitespace_table_is_the_isspace_set():
    every = {chr(code) for code in range(0x110000) if chr(code).isspace()}
    assert every == WHITESPACE_CHARACTERS


# ---------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>fear</answer>", "fear"),
        ("<answer>  fear \n</answer>", "fear"),
        ("<answer>sadness</answer> then <answer>happiness</answer>", "happiness"),  # LAST
        ("<answer>a<answer>b</answer>", "a<answer>b"),  # first opening, first closing after it
        ("<answer>a</answer><answer>b", "a"),  # the unclosed tail is not a pair
        ("no tags here \n", "no tags here"),  # whole text stripped
        ("<answer>fear", "<answer>fear"),
        ("<ANSWER>fear</ANSWER>", "<ANSWER>fear</ANSWER>"),  # tags are case-sensitive
        ("<answer></answer>", ""),
        ("<answer>\u2003fear\u00a0</answer>", "fear"),  # Unicode whitespace stripped
        ("", ""),
    ],
)
def test_extract_answer_last(text, expected):
    assert extract_answer_last(text) == expected


def _scan_answer_last(text: str) -> str:
    contents, position = [], 0
    while True:
        start = text.find("<answer>", position)
        if start < 0:
            break
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        contents.append(text[start + len("<answer>") : end])
        position = end + len("</answer>")
    chosen = contents[-1] if contents else text
    return chosen.strip("".join(WHITESPACE_CHARACTERS))


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_extract_answer_last_matches_an_independent_scanner(text):
    assert extract_answer_last(text) == _scan_answer_last(text)


@pytest.mark.parametrize("mode", ["normalized", "exact"])
@pytest.mark.parametrize("label", [None, "", "   "])
@pytest.mark.parametrize("text", ["", "<answer>fear</answer>", answer("AU1", "happiness"), "junk"])
def test_empty_label_gives_half(mode, label, text):
    assert accuracy_reward(text, label, mode=mode) == 0.5


@pytest.mark.parametrize(
    "text, label, exact, normalized",
    [
        (answer("x", "happiness"), "happiness", 1.0, 1.0),
        (answer("x", " happiness\n"), "happiness", 1.0, 1.0),
        (answer("x", "Happiness"), "happiness", 0.0, 1.0),
        (answer("x", "Happy."), "happiness", 0.0, 1.0),
        (answer("x", "SURPRISED!"), "surprise", 0.0, 1.0),
        (answer("x", "happiness"), "Happy", 0.0, 1.0),  # both sides normalised
        (answer("x", "sadness"), "happiness", 0.0, 0.0),
        (answer("x", "happiness and surprise"), "happiness", 0.0, 0.0),
        (answer("x", ""), "happiness", 0.0, 0.0),  # empty answer
        (answer("x", "  "), "happiness", 0.0, 0.0),
        ("<answer>sadness</answer><answer>fear</answer>", "fear", 1.0, 1.0),  # last answer
        ("<answer>fear</answer><answer>sadness</answer>", "fear", 0.0, 0.0),
        ("happiness", "happiness", 1.0, 1.0),  # no tag: whole completion
        ("  happiness \n", "happiness", 1.0, 1.0),
        ("I think it is happiness", "happiness", 0.0, 0.0),
        ("<answer>happiness", "happiness", 0.0, 0.0),  # unclosed tag: whole text
        ("<ANSWER>happiness</ANSWER>", "happiness", 0.0, 0.0),
        ("<think>x</think><answer>a<answer>happiness</answer>", "happiness", 0.0, 0.0),
        (answer("x", "Joyous"), "joyous", 0.0, 1.0),  # unknown words still compare cleaned
        (answer("x", "..."), "...", 1.0, 0.0),  # nothing left after cleaning never matches
    ],
)
def test_accuracy_reward(text, label, exact, normalized):
    assert accuracy_reward(text, label, mode="exact") == exact
    assert accuracy_reward(text, label, mode="normalized") == normalized
    assert accuracy_reward(text, label) == normalized, "normalized is the default"


def test_accuracy_reward_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'fuzzy'"):
        accuracy_reward("x", "fear", mode="fuzzy")


@given(_TEXTS, st.sampled_from(EMOTIONS))
def test_exact_match_implies_normalized_match(text, label):
    if accuracy_reward(text, label, mode="exact") == 1.0:
        assert accuracy_reward(text, label, mode="normalized") == 1.0


# -------------------------------------------------------------------------------- AU reward
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a</think>", "a"),
        ("<THINK>a</Think>", "a"),  # tags case-insensitive
        ("<think>\u0130 a</think>", "\u0130 a"),
        ("<thinK>a</tHink>", "a"),
        ("<thin\u212a>a</think>", "a"),  # U+212A KELVIN SIGN matches "k" under IGNORECASE
        ("<th\u0131nk>a</think>", "a"),  # dotless i matches "i"
        ("<think>a</think><think>b</think>", "a"),  # FIRST block
        ("<think>a<think>b</think>c</think>", "a<think>b"),
        ("x <think>\n a \n</think> y", "\n a \n"),  # content not stripped
        ("<think>a", None),
        ("a</think>", None),
        ("", None),
    ],
)
def test_extract_think_first(text, expected):
    assert extract_think_first(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AU1 AU2", {"AU1", "AU2"}),
        ("au12, Au4 and aU6", {"AU12", "AU4", "AU6"}),
        ("AU120", {"AU120"}),  # digit run taken whole: not AU12
        ("AU01", {"AU01"}),  # compared as strings: not AU1
        ("AU12AU4", {"AU12", "AU4"}),
        ("BEAU1", {"AU1"}),
        ("AU 12, AU-4, AU", set()),
        ("AU\u0661\u0662", set()),  # Arabic-Indic digits are not ASCII digits
        ("AU\uff11", set()),  # full-width digit one
        ("AU12 AU12 AU12", {"AU12"}),
        ("", set()),
    ],
)
def test_au_mentions(text, expected):
    assert au_mentions(text) == frozenset(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        (answer("brows (AU1) and (AU2)", "surprise"), {"AU1", "AU2"}),
        ("<think>AU1</think><think>AU2</think><answer>x</answer>", {"AU1"}),
        ("<think>x</think><answer>AU12</answer>", set()),  # outside think: ignored
        ("AU12 <answer>fear</answer>", set()),  # no think block: P = {}
        ("<think>AU12", set()),  # unclosed: no block
        ("<THINK>au12</THINK>", {"AU12"}),
        ("prefix AU9 <think>AU4</think> AU7", {"AU4"}),
    ],
)
def test_reward_aus(text, expected):
    assert reward_aus(text) == frozenset(expected)


def _f1_counts(predicted, truth):
    """2TP / (|P| + |T|): the same F1 as 2pr/(p+r), written from counts."""
    overlap = len(set(predicted) & set(truth))
    return 2 * overlap / (len(predicted) + len(truth))


@pytest.mark.parametrize(
    "text, truth, two_f1_minus_one, f1",
    [
        ("anything", [], 0.0, 0.0),  # T = {} -> 0
        (answer("AU12", "happiness"), [], 0.0, 0.0),
        ("", ["AU12"], -1.0, 0.0),  # no think block: P = {} -> -1
        ("AU12 said outside", ["AU12"], -1.0, 0.0),
        (answer("the face shows joy", "happiness"), ["AU12"], -1.0, 0.0),  # think without AUs
        (answer("(AU6) (AU12)", "happiness"), ["AU6", "AU12"], 1.0, 1.0),
        (answer("(au6) (Au12)", "happiness"), ["AU6", "AU12"], 1.0, 1.0),  # upper-cased
        (answer("(AU6) (AU12)", "happiness"), ["au6", "au12"], 1.0, 1.0),  # T upper-cased too
        (answer("(AU120)", "happiness"), ["AU12"], -1.0, 0.0),  # p + r = 0 -> F1 = 0
        (answer("(AU01)", "happiness"), ["AU1"], -1.0, 0.0),
        (answer("(AU4)", "anger"), ["AU12"], -1.0, 0.0),
        # P={1,2,9}, T={1,2,4,5}: F1 = 4/7
        (answer("AU1 AU2 AU9", "fear"), ["AU1", "AU2", "AU4", "AU5"], 2 * 4 / 7 - 1, 4 / 7),
        # P={12}, T={6,12}: F1 = 2/3, repeated mentions count once
        (answer("AU12 AU12 AU12", "happiness"), ["AU6", "AU12"], 1 / 3, 2 / 3),
        # superset prediction: P={6,12,25}, T={12}: F1 = 2/4
        (answer("AU6 AU12 AU25", "happiness"), ["AU12"], 0.0, 0.5),
    ],
)
def test_au_reward(text, truth, two_f1_minus_one, f1):
    assert au_reward(text, truth) == pytest.approx(two_f1_minus_one, abs=TOL)
    assert au_reward(text, truth, mode="2f1-1") == pytest.approx(two_f1_minus_one, abs=TOL)
    assert au_reward(text, truth, mode="f1") == pytest.approx(f1, abs=TOL)


def test_au_reward_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'f2'"):
        au_reward("x", ["AU1"], mode="f2")


_AU_POOL = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU120", "AU01", "AU25"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_AU_POOL), max_size=6),
    st.lists(st.sampled_from(_AU_POOL), max_size=5),
    st.sampled_from(["", "x ", "au"]),
)
def test_au_reward_properties(mentioned, truth, filler):
    text = answer(filler + " ".join(f"({au})" for au in mentioned), "fear")
    two_f1_minus_one = au_reward(text, truth, mode="2f1-1")
    f1 = au_reward(text, truth, mode="f1")
    assert -1.0 <= two_f1_minus_one <= 1.0 and 0.0 <= f1 <= 1.0
    if not truth:
        assert two_f1_minus_one == 0.0 and f1 == 0.0
        return
    assert two_f1_minus_one == pytest.approx(2 * f1 - 1, abs=TOL)
    predicted = set(mentioned)
    expected = _f1_counts(predicted, set(truth)) if predicted else 0.0
    assert f1 == pytest.approx(expected, abs=TOL)
    assert (two_f1_minus_one == 1.0) == (predicted == set(truth))


# ------------------------------------------------------------------------------------ total
def test_total_reward_sums_terms_with_default_weights():
    perfect = answer("(AU6) (AU12)", "happiness")
    result = total_reward(perfect, "happiness", ["AU6", "AU12"])
    assert result == {"format": 1.0, "accuracy": 1.0, "au": 1.0, "total": 3.0}
    worst = "rambling"
    result = total_reward(worst, "happiness", ["AU6"])
    assert result == {"format": 0.0, "accuracy": 0.0, "au": -1.0, "total": -1.0}
    no_labels = total_reward(perfect, None, [])
    assert no_labels == {"format": 1.0, "accuracy": 0.5, "au": 0.0, "total": 1.5}


def test_total_reward_weights_modes_and_clamp():
    text = answer("(AU6)", "Happy")
    truth = ["AU6", "AU12"]  # F1 = 2/3
    result = total_reward(
        text,
        "happiness",
        truth,
        weights={"format": 2.0, "au": 3.0},
        accuracy_mode="exact",
        au_mode="f1",
    )
    assert result["accuracy"] == 0.0
    assert result["au"] == pytest.approx(2 / 3, abs=TOL)
    assert result["total"] == pytest.approx(2.0 + 3.0 * 2 / 3, abs=TOL)

    assert total_reward(text, "happiness", truth, weights={"format": 20.0})["total"] == 10.0
    assert total_reward("", "fear", ["AU1"], weights={"au": 20.0})["total"] == -10.0
    assert total_reward("", "fear", ["AU1"], weights={"au": 20.0}, clamp=None)["total"] == -20.0
    assert (
        total_reward(text, "happiness", truth, weights={"format": 20.0}, clamp=(-1.0, 1.5))["total"]
        == 1.5
    )


def test_total_reward_rejects_bad_configuration():
    with pytest.raises(ValueError, match="'acc'"):
        total_reward("x", "fear", [], weights={"acc": 1.0})
    with pytest.raises(ValueError, match="clamp"):
        total_reward("x", "fear", [], clamp=(1.0, -1.0))


# ------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize(
    "text, expected",
    [
        (answer("x", "fear"), "fear"),
        ("<answer>sadness</answer><answer>happiness</answer>", "sadness"),  # FIRST answer
        ("<answer> fear; surprise</answer>", "fear"),
        ("<answer>fear,surprise</answer>", "fear"),
        ("<answer>\n\nanger\n</answer>", "anger"),
        ("<answer>happiness.</answer>", "happiness."),  # punctuation other than , ; kept
        ("<answer>  </answer>", ""),
        ("<answer></answer> fear", ""),  # an empty first answer is not skipped
        ("Happiness, because the lips rise", "Happiness"),  # no answer: whole output
        (" ,; ", ""),
        ("", ""),
        ("<answer>fear", "<answer>fear"),
    ],
)
def test_eval_emotion(text, expected):
    assert eval_emotion(text) == expected


@pytest.mark.parametrize(
    "text, label, normalized, exact",
    [
        (answer("x", "fear"), "fear", True, True),
        (answer("x", "Fear."), "fear", True, False),
        (answer("x", "happy, maybe sad"), "happiness", True, False),
        (answer("x", "sad"), "happiness", False, False),
        (answer("x", ""), "fear", False, False),
        (answer("x", "fear"), None, False, False),
        (answer("x", "fear"), "", False, False),
    ],
)
def test_eval_emotion_correct(text, label, normalized, exact):
    assert eval_emotion_correct(text, label) is normalized
    assert eval_emotion_correct(text, label, normalize=False) is exact


@pytest.mark.parametrize(
    "text, expected",
    [
        (answer("(AU4) (AU7) (au4)", "anger"), {"AU4", "AU7"}),
        ("<think>AU1</think><think>AU2</think>", {"AU1"}),
        ("The brows AU4 and AU7 <answer>anger AU9</answer>", {"AU4", "AU7", "AU9"}),  # whole output
        ("<THINK>AU6</THINK> AU12", {"AU6"}),
        ("<think></think> AU12", set()),  # an empty think block is still the block
        ("AU01 AU120", {"AU01", "AU120"}),
        ("", set()),
    ],
)
def test_eval_aus(text, expected):
    assert eval_aus(text) == frozenset(expected)


def test_binary_f1_edge_cases():
    assert binary_f1(0, 0, 0) == 0.0
    assert binary_f1(3, 0, 0) == 1.0
    assert binary_f1(0, 5, 0) == 0.0
    assert binary_f1(1, 1, 1) == pytest.approx(0.5, abs=TOL)


def test_au_f1_by_hand():
    au_list = ["AU1", "AU2", "AU4"]
    predicted = [{"AU1"}, {"AU1", "AU2", "AU9"}, set()]  # AU9 is outside the list: ignored
    truth = [{"AU1"}, {"AU2"}, {"AU4", "AU9"}]
    report = au_f1(predicted, truth, au_list)
    # AU1: tp 1, fp 1, fn 0 -> 2/3; AU2: tp 1 -> 1; AU4: fn 1 -> 0
    assert report.per_au == pytest.approx({"AU1": 2 / 3, "AU2": 1.0, "AU4": 0.0}, abs=TOL)
    assert report.macro == pytest.approx((2 / 3 + 1.0) / 3, abs=TOL)
    # pooled: tp 2, fp 1, fn 1 -> 4/6
    assert report.micro == pytest.approx(2 / 3, abs=TOL)
    assert report.support == {"AU1": 1, "AU2": 1, "AU4": 1}


def test_au_f1_counts_absent_aus_as_zero_in_macro_and_compares_strings():
    report = au_f1([{"au1"}, {"AU01"}], [{"AU1"}, {"AU1"}], ["AU1", "AU43"])
    assert report.per_au["AU1"] == pytest.approx(2 / 3, abs=TOL)  # "AU01" is a miss
    assert report.per_au["AU43"] == 0.0  # no positives anywhere
    assert report.macro == pytest.approx(1 / 3, abs=TOL)
    assert report.micro == pytest.approx(2 / 3, abs=TOL)


def test_au_f1_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        au_f1([set(), set()], [set()], ["AU1"])
    with pytest.raises(ValueError, match="empty"):
        au_f1([set()], [set()], [])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from(_AU_POOL[:5])), st.sets(st.sampled_from(_AU_POOL[:5]))),
        min_size=1,
        max_size=8,
    )
)
def test_au_f1_micro_equals_pooled_set_f1(pairs):
    au_list = _AU_POOL[:5]
    predicted, truth = zip(*pairs, strict=True)
    report = au_f1(predicted, truth, au_list)
    tp = sum(len(p & t) for p, t in pairs)
    fp = sum(len(p - t) for p, t in pairs)
    fn = sum(len(t - p) for p, t in pairs)
    expected = 0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    assert report.micro == pytest.approx(expected, abs=TOL)
    assert 0.0 <= report.macro <= 1.0
    assert math.isclose(report.macro, sum(report.per_au.values()) / len(au_list), abs_tol=TOL)


# -------------------------------------------------------------------------- stage 3 check
PASSING = answer("The brows rise (AU1) (AU2) and the jaw drops (AU26), so surprise.", "surprise")
PASSING_TRUTH = ["AU1", "AU2", "AU26"]


def test_a_correct_answer_passes_and_earns_the_full_reward():
    check = inspect_synthesis(PASSING, PASSING_TRUTH, "surprise")
    assert check.passed and check.problems == ()
    assert check_synthesis(PASSING, PASSING_TRUTH, "surprise") == []
    for mode in ("normalized", "exact"):
        assert total_reward(PASSING, "surprise", PASSING_TRUTH, accuracy_mode=mode)["total"] == 3.0


@pytest.mark.parametrize(
    "text, truth, label, fragments",
    [
        (answer("(AU1) (AU26)", "surprise"), PASSING_TRUTH, "surprise", ["not named", "AU2"]),
        (
            answer("(AU1) (AU2) (AU26) (AU5)", "surprise"),
            PASSING_TRUTH,
            "surprise",
            ["not in the ground truth", "AU5"],
        ),
        (
            answer("(AU1) (AU2) (AU26)", "fear"),
            PASSING_TRUTH,
            "surprise",
            ["'fear' is wrong", "'surprise'"],
        ),
        (
            answer("(AU1) (AU2) (AU26)", "Surprised"),
            PASSING_TRUTH,
            "surprise",
            ["exactly as 'surprise'"],
        ),
        ("<answer>surprise</answer>", [], "surprise", ["no <think>"]),
        (answer("   ", "surprise"), [], "surprise", ["<think>...</think> block is empty"]),
        ("<think>(AU1)</think>", ["AU1"], None, ["no <answer>"]),
        (answer("(AU1)", " "), ["AU1"], None, ["<answer>...</answer> block is empty"]),
        ("Here: " + answer("(AU1)", "fear"), ["AU1"], "fear", ["nothing before or after"]),
        (
            answer("(AU1)", "fear") + "<answer>fear</answer>",
            ["AU1"],
            "fear",
            ["more than one <answer>"],
        ),
        (
            "<think>(AU1)</think><think>x</think><answer>fear</answer>",
            ["AU1"],
            "fear",
            ["more than one <think>"],
        ),
        (answer("(AU01)", "fear"), ["AU1"], "fear", ["AU1", "AU01"]),
    ],
)
def test_failed_checks_name_the_problem(text, truth, label, fragments):
    problems = check_synthesis(text, truth, label)
    assert problems, "the check must reject this answer"
    joined = "\n".join(problems)
    for fragment in fragments:
        assert fragment in joined


def test_check_skips_what_the_record_does_not_have():
    # no AU ground truth: any AUs are fine; no label: any answer word is fine
    text = answer("(AU4) (AU9)", "whatever")
    assert check_synthesis(text, [], None) == []
    assert check_synthesis(text, ["AU4", "AU9"], None) == []
    assert check_synthesis(answer("x", "fear"), [], "fear") == []


def test_reference_check_without_format_requirement():
    text = "Sure. " + answer("(AU1)", "fear") + " Done."
    assert check_synthesis(text, ["AU1"], "fear", require_format=False) == []
    assert check_synthesis(text, ["AU1"], "fear") != []


def test_missing_and_extra_aus_are_listed_numerically():
    check = inspect_synthesis(answer("(AU25) (AU9)", "x"), ["AU12", "AU2", "AU10"], None)
    assert check.missing_aus == ("AU2", "AU10", "AU12")
    assert check.extra_aus == ("AU9", "AU25")


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.sampled_from(_AU_POOL), max_size=4),
    st.sets(st.sampled_from(_AU_POOL), max_size=4),
    st.sampled_from(EMOTIONS),
    st.sampled_from((*EMOTIONS, "Happy", "")),
    st.sampled_from(["", " ", "x"]),
    st.booleans(),
)
def test_any_accepted_answer_earns_full_reward(mentioned, truth, label, written, pad, with_label):
    think = "face " + " ".join(f"({au})" for au in sorted(mentioned))
    text = pad + answer(think, written)
    gt_label = label if with_label else None
    if check_synthesis(text, truth, gt_label):
        return
    rewards = total_reward(text, gt_label, truth, accuracy_mode="exact")
    assert rewards["format"] == 1.0
    assert rewards["au"] == (1.0 if truth else 0.0)
    assert rewards["accuracy"] == (1.0 if with_label else 0.5)


def test_hand_enumeration_of_tag_orders_for_format():
    parts = ["<think>t</think>", "<answer>a</answer>", "x"]
    good = {("<think>t</think>", "<answer>a</answer>")}
    for count in (1, 2, 3):
        for order in itertools.permutations(parts, count):
            text = "".join(order)
            assert format_reward(text) == (1.0 if order in good else 0.0), text


def test_au_sets_given_as_one_string_are_rejected():
    with pytest.raises(TypeError, match="'AU12'"):
        au_reward(answer("(AU12)", "happiness"), "AU12")
    with pytest.raises(TypeError):
        au_f1(["AU12"], [{"AU12"}], ["AU12"])
