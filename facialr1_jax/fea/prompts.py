"""Instruction text for the user turn: the task prompt, the stage 3 synthesis prompt, feedback.

Layout (docs/METHOD.md 3.2), in this order:
  1. the question (the record's, `<image>` placeholders removed; a default when empty);
  2. requirements: one concise paragraph of reasoning inside think tags about the critical AUs,
     visible features with AU numbers in parentheses, how the AUs together indicate the emotion,
     no negations or hedges, then one emotion word from the allowed list inside answer tags;
  3. the definitions of the 30 prompt AUs (`aus.PROMPT_AUS`);
  4. one worked example of a complete answer.
The "compact" variant keeps 1 and 2 only (for small models and short contexts).

The synthesis prompt (docs/METHOD.md 3.3) appends a ground-truth section; a rejected attempt appends a
feedback section quoting it and listing its problems (`answers.inspect_synthesis` words them).
The wording is ours. The image itself is not part of this text: the chat template puts it before
the instruction in the user turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from facialr1_jax.fea.answers import inspect_synthesis, label_is_empty
from facialr1_jax.fea.aus import FACS_AU_NAMES, PROMPT_AUS, parse_au_codes
from facialr1_jax.fea.emotions import EMOTIONS, normalize_emotion

# Qwen2.5-VL's chat template inserts this system line when a conversation has none.
SYSTEM_PROMPT = "You are a helpful assistant."

DEFAULT_QUESTION = (
    "Which emotion does the person in this image express? "
    "Base your answer on the facial action units you can see."
)

VARIANTS = ("full", "compact")

# The worked example: a complete answer that earns every reward (format 1, accuracy 1 for
# EXAMPLE_LABEL, AU reward 1 for EXAMPLE_AUS) and follows every requirement (tests check this).
EXAMPLE_AUS: tuple[str, ...] = ("AU6", "AU12", "AU25")
EXAMPLE_LABEL = "happiness"
EXAMPLE_ANSWER = (
    "<think>The cheeks are lifted and the lower eyelids bunch upward (AU6), the lip corners are "
    "drawn up and back (AU12), and the lips are slightly apart (AU25). Lifted cheeks together "
    "with raised lip corners form a genuine smile, and the relaxed parted lips fit an open, "
    "pleased expression, so these AUs together indicate happiness.</think>\n"
    f"<answer>{EXAMPLE_LABEL}</answer>"
)

_IMAGE_PLACEHOLDER = re.compile(r"<image>", re.IGNORECASE)


def clean_question(question: str | None) -> str:
    """The question with every `<image>` placeholder removed and whitespace tidied; the default
    question when nothing is left (docs/METHOD.md 2.1)."""
    if question is None:
        return DEFAULT_QUESTION
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    text = _IMAGE_PLACEHOLDER.sub(" ", question)
    # Collapse the gaps the placeholder leaves, but keep the question's own line breaks.
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    text = "\n".join(line for line in lines if line)
    return text or DEFAULT_QUESTION


def allowed_labels(labels: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical, de-duplicated allowed labels in the caller's order; all eight when None."""
    if labels is None:
        return EMOTIONS
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of emotions, not the string {labels!r}")
    canonical = tuple(dict.fromkeys(normalize_emotion(label) for label in labels))
    if not canonical:
        raise ValueError("the allowed label list is empty: a prompt needs at least one emotion")
    return canonical


def _requirements(labels: Sequence[str]) -> str:
    return "\n".join(
        [
            "Requirements:",
            "1. Put your reasoning inside <think> and </think> as one concise paragraph about the "
            "facial action units (AUs) that matter most for this face.",
            "2. Describe each visible facial feature and give its AU number in parentheses, for "
            'example "the brows are pulled down and together (AU4)".',
            "3. After the features, explain how these AUs together indicate the emotion.",
            '4. Describe only what is present: avoid negations and hedges such as "no", '
            '"not", "without" or "maybe".',
            "5. After the reasoning, give the emotion as a single word inside <answer> and "
            "</answer>, chosen from this list: " + ", ".join(labels) + ".",
        ]
    )


def _au_definitions() -> str:
    lines = ["AU definitions:"]
    lines += [f"{au}: {name}" for au, name in PROMPT_AUS.items()]
    return "\n".join(lines)


def _example() -> str:
    return "Example of a complete answer:\n" + EXAMPLE_ANSWER


def build_instruction(
    question: str | None, labels: Iterable[str] | None, variant: str = "full"
) -> str:
    """The user-turn instruction (docs/METHOD.md 3.2): question, requirements with the allowed list,
    and for the "full" variant the 30 AU definitions and the worked example."""
    if variant not in VARIANTS:
        raise ValueError(f"prompt variant {variant!r} is not one of {VARIANTS}")
    sections = [clean_question(question), _requirements(allowed_labels(labels))]
    if variant == "full":
        sections += [_au_definitions(), _example()]
    return "\n\n".join(sections)


def _describe_au(au: str) -> str:
    name = FACS_AU_NAMES.get(au)
    return f"{au} ({name})" if name else au


def build_synthesis_instruction(
    question: str | None,
    labels: Iterable[str] | None,
    gt_aus: Iterable[str] | None,
    gt_label: str | None,
    variant: str = "full",
) -> str:
    """The stage 3 prompt (docs/METHOD.md 3.3): the instruction plus a ground-truth section with
    the AU line only when the record has AUs and the emotion line only when it has a label.

    `gt_aus` are source or canonical codes (parsed with `aus.parse_au_codes`); `gt_label` any
    spelling `emotions.normalize_emotion` accepts. The check that follows compares with the
    canonical forms written here.
    """
    instruction = build_instruction(question, labels, variant)
    aus = parse_au_codes(list(gt_aus) if gt_aus is not None else None)
    lines = []
    if aus:
        lines.append(
            "- Your analysis must identify exactly these AUs, each with its number in "
            "parentheses, and no other AU: " + ", ".join(_describe_au(au) for au in aus) + "."
        )
    if not label_is_empty(gt_label):
        lines.append(f"- Your final answer must be this emotion: {normalize_emotion(gt_label)}.")
    if not lines:
        return instruction
    ground_truth = "\n".join(
        [
            "Ground truth for this image (describe these findings as things you see in the face; "
            "do not mention that they were given to you):",
            *lines,
        ]
    )
    return instruction + "\n\n" + ground_truth


def build_feedback(previous_answer: str, problems: Sequence[str]) -> str:
    """A feedback section for a rejected attempt (docs/METHOD.md 3.3: it quotes the previous
    answer and lists what was wrong). Append it to the synthesis prompt; several rounds accumulate."""
    if isinstance(problems, str):
        raise TypeError("problems must be a sequence of sentences, not one string")
    if not problems:
        raise ValueError("build_feedback needs at least one problem to report")
    listed = "\n".join(f"- {problem}" for problem in problems)
    return (
        "Your previous answer was:\n"
        '"""\n'
        f"{previous_answer}\n"
        '"""\n'
        "It was rejected for these reasons:\n"
        f"{listed}\n"
        "Write a new complete answer that fixes every problem and keeps to the requirements."
    )


def synthesis_problems(
    answer: str, gt_aus: Iterable[str] | None, gt_label: str | None, *, require_format: bool = True
) -> list[str]:
    """The problem list for feedback, from the stage 3 check of `answer` against the ground
    truth (missing AUs, extra AUs, wrong label, missing or empty think / answer, format)."""
    aus = parse_au_codes(list(gt_aus) if gt_aus is not None else None)
    label = None if label_is_empty(gt_label) else normalize_emotion(gt_label)
    return list(inspect_synthesis(answer, aus, label, require_format=require_format).problems)


def feedback_for_answer(
    answer: str, gt_aus: Iterable[str] | None, gt_label: str | None, *, require_format: bool = True
) -> str | None:
    """The feedback section for `answer`, or None when it passes the check."""
    problems = synthesis_problems(answer, gt_aus, gt_label, require_format=require_format)
    return build_feedback(answer, problems) if problems else None
