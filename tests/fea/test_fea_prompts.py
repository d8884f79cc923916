"""Instruction, synthesis and feedback prompts (docs/METHOD.md sections 3 and 8)."""

import re

import pytest

from facialr1_jax.fea.answers import check_synthesis, total_reward
from facialr1_jax.fea.aus import PROMPT_AUS
from facialr1_jax.fea.emotions import EMOTIONS, UnknownLabelError
from facialr1_jax.fea.profiles import labels_for
from facialr1_jax.fea.prompts import (
    DEFAULT_QUESTION,
    EXAMPLE_ANSWER,
    EXAMPLE_AUS,
    EXAMPLE_LABEL,
    SYSTEM_PROMPT,
    build_feedback,
    build_instruction,
    build_synthesis_instruction,
    clean_question,
    feedback_for_answer,
    synthesis_problems,
)

SEVEN = labels_for("RAF-DB")
HEDGES = ("no", "not", "without", "maybe")


def _positions(text, *markers):
    positions = [text.find(marker) for marker in markers]
    assert all(position >= 0 for position in positions), (markers, positions)
    return positions


def test_system_prompt_is_qwens_default():
    assert SYSTEM_PROMPT == "You are a helpful assistant."


def test_full_instruction_has_the_four_sections_in_order():
    text = build_instruction("What does the face show?", SEVEN)
    positions = _positions(
        text,
        "What does the face show?",
        "Requirements:",
        "AU definitions:",
        "Example of a complete answer:",
    )
    assert positions == sorted(positions)
    assert text.startswith("What does the face show?")
    assert text.rstrip().endswith(EXAMPLE_ANSWER)


def test_requirements_cover_every_method_point():
    text = build_instruction(None, SEVEN)
    requirements = text[text.index("Requirements:") : text.index("AU definitions:")]
    for needle in (
        "<think>",
        "</think>",
        "one concise paragraph",
        "AU number in parentheses",
        "together indicate the emotion",
        '"no"',
        '"not"',
        '"without"',
        '"maybe"',
        "single word",
        "<answer>",
        "</answer>",
    ):
        assert needle in requirements, needle


def test_allowed_list_is_the_given_labels():
    text = build_instruction("q", SEVEN)
    listed = re.search(r"chosen from this list: (.*)\.", text).group(1).split(", ")
    assert listed == list(SEVEN)
    assert "contempt" not in listed
    text = build_instruction("q", EMOTIONS, variant="compact")
    assert re.search(r"chosen from this list: (.*)\.", text).group(1).split(", ") == list(EMOTIONS)


def test_labels_are_normalised_deduplicated_and_validated():
    text = build_instruction("q", ["Happy", "happiness", "SAD"], variant="compact")
    assert "chosen from this list: happiness, sadness." in text
    assert "chosen from this list: " + ", ".join(EMOTIONS) + "." in build_instruction("q", None)
    with pytest.raises(UnknownLabelError, match="'happyy'"):
        build_instruction("q", ["happyy"])
    with pytest.raises(ValueError, match="empty"):
        build_instruction("q", [])
    with pytest.raises(TypeError):
        build_instruction("q", "happiness")


def test_all_30_definitions_in_method_order():
    text = build_instruction("q", SEVEN)
    section = text[text.index("AU definitions:") : text.index("Example of a complete answer:")]
    lines = [line for line in section.splitlines()[1:] if line.strip()]
    assert lines == [f"{au}: {name}" for au, name in PROMPT_AUS.items()]
    assert len(lines) == 30


def test_compact_variant_has_no_definitions_and_no_example():
    compact = build_instruction("What now?", SEVEN, variant="compact")
    full = build_instruction("What now?", SEVEN, variant="full")
    assert "Requirements:" in compact and "What now?" in compact
    assert "AU definitions:" not in compact and "inner brow raiser" not in compact
    assert "Example" not in compact and EXAMPLE_ANSWER not in compact
    assert full.startswith(compact)
    assert len(compact) < len(full) / 2


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="'short'"):
        build_instruction("q", SEVEN, variant="short")


@pytest.mark.parametrize(
    "question, expected",
    [
        ("<image>What is the emotion?", "What is the emotion?"),
        ("<image>\nWhat is the emotion?", "What is the emotion?"),
        ("What is <image> the emotion?", "What is the emotion?"),
        ("<IMAGE><image> Look.\nAnswer briefly.", "Look.\nAnswer briefly."),
        ("<image>", DEFAULT_QUESTION),
        ("", DEFAULT_QUESTION),
        ("   \n", DEFAULT_QUESTION),
        (None, DEFAULT_QUESTION),
    ],
)
def test_question_cleaning(question, expected):
    assert clean_question(question) == expected
    text = build_instruction(question, SEVEN)
    assert text.startswith(expected + "\n\n")
    assert "<image>" not in text.lower()


def test_non_string_question_is_rejected():
    with pytest.raises(TypeError):
        clean_question(3)


def test_worked_example_passes_every_reward_and_the_synthesis_check():
    assert EXAMPLE_LABEL in EMOTIONS
    for accuracy_mode in ("exact", "normalized"):
        for au_mode in ("2f1-1", "f1"):
            rewards = total_reward(
                EXAMPLE_ANSWER,
                EXAMPLE_LABEL,
                EXAMPLE_AUS,
                accuracy_mode=accuracy_mode,
                au_mode=au_mode,
            )
            assert rewards["format"] == 1.0 and rewards["accuracy"] == 1.0 and rewards["au"] == 1.0
    assert check_synthesis(EXAMPLE_ANSWER, EXAMPLE_AUS, EXAMPLE_LABEL) == []


def test_worked_example_follows_its_own_requirements():
    think = EXAMPLE_ANSWER[EXAMPLE_ANSWER.index("<think>") + 7 : EXAMPLE_ANSWER.index("</think>")]
    words = re.findall(r"[a-z]+", think.lower())
    assert not set(words) & set(HEDGES)
    assert "\n" not in think, "one paragraph"
    assert re.findall(r"\((AU[0-9]+)\)", think) == list(EXAMPLE_AUS), "AU numbers in parentheses"
    assert all(au in PROMPT_AUS for au in EXAMPLE_AUS)


def test_synthesis_prompt_adds_ground_truth_only_for_what_the_record_has():
    base = build_instruction("q", SEVEN)
    both = build_synthesis_instruction("q", SEVEN, ["AU26", "L1", "2"], "Surprised")
    assert both.startswith(base + "\n\n")
    truth = both[len(base) :]
    assert "must identify exactly these AUs" in truth
    assert "AU1 (inner brow raiser), AU2 (outer brow raiser), AU26 (jaw drop)" in truth
    assert "must be this emotion: surprise." in truth

    aus_only = build_synthesis_instruction("q", SEVEN, ["AU4"], None)
    assert "AU4 (brow lowerer)" in aus_only and "must be this emotion" not in aus_only
    label_only = build_synthesis_instruction("q", SEVEN, [], "fear")
    assert "must be this emotion: fear." in label_only and "must identify" not in label_only
    assert build_synthesis_instruction("q", SEVEN, [], "") == base
    assert build_synthesis_instruction("q", SEVEN, None, None) == base


def test_synthesis_prompt_compact_and_unprompted_aus():
    text = build_synthesis_instruction(None, SEVEN, ["AU45"], None, variant="compact")
    assert "AU definitions:" not in text
    assert "AU45 (blink)" in text


def test_synthesis_prompt_rejects_bad_ground_truth():
    with pytest.raises(ValueError, match="'xyz'"):
        build_synthesis_instruction("q", SEVEN, ["xyz"], None)
    with pytest.raises(UnknownLabelError):
        build_synthesis_instruction("q", SEVEN, [], "happyy")


def test_feedback_quotes_the_answer_and_lists_problems():
    previous = "<think>brows up (AU1)</think><answer>fear</answer>"
    problems = ["first problem", "second problem"]
    text = build_feedback(previous, problems)
    assert previous in text
    quote_start, first, second = _positions(text, previous, "- first problem", "- second problem")
    assert quote_start < first < second
    with pytest.raises(ValueError):
        build_feedback(previous, [])
    with pytest.raises(TypeError):
        build_feedback(previous, "one string")


def test_feedback_from_the_check():
    wrong = "<think>brows up (AU1) (AU9)</think><answer>fear</answer>"
    problems = synthesis_problems(wrong, ["AU1", "AU2"], "surprised")
    joined = "\n".join(problems)
    assert "AU2" in joined and "AU9" in joined and "'fear' is wrong" in joined
    feedback = feedback_for_answer(wrong, ["AU1", "AU2"], "surprised")
    assert wrong in feedback and all(problem in feedback for problem in problems)
    right = "<think>brows up (AU1) (AU2)</think><answer>surprise</answer>"
    assert feedback_for_answer(right, ["L1", "2"], "Surprised") is None
    assert synthesis_problems(right, None, None) == []
