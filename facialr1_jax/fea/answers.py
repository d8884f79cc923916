"""Reference semantics of every reward and metric on a model answer (the oracle).

This module is the readable definition that the jitted JAX rewards (`facialr1_jax.rewards`) and the
evaluation harness are tested against, so each rule names the docs/METHOD.md section it implements
and states the corner cases explicitly. Everything works on Python `str`; regular expressions are
Python `re` on str patterns, so:
  * `.` under re.DOTALL matches any character including newlines;
  * `\\s` matches every character for which `str.isspace()` is true (Unicode whitespace such as
    U+00A0 and U+2003 included, not only ASCII);
  * `str.strip()` removes the same `str.isspace()` set;
  * AU numbers are ASCII digits `[0-9]` only (never `\\d`, which accepts other scripts' digits);
  * re.IGNORECASE (the think tag) follows Unicode simple case folding, so besides ASCII case the
    "i" of "think" also matches U+0130 "İ" and U+0131 "ı", and its "k" matches U+212A KELVIN SIGN;
  * `str.upper()` (before the AU search) only ever produces "AU<digits>" from ASCII "a"/"A",
    "u"/"U" and ASCII digits, so an AU mention is an ASCII-only pattern.

Stage 2 rewards (docs/METHOD.md section 6): `format_reward`, `accuracy_reward`, `au_reward`,
`total_reward`.
Evaluation parsing (docs/METHOD.md section 9): `eval_emotion`, `eval_aus`, `eval_emotion_correct`,
`au_f1`.
Stage 3 acceptance (docs/METHOD.md 8.3): `inspect_synthesis`, `check_synthesis`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

from facialr1_jax.fea.emotions import clean_label_text, try_normalize_emotion

# --------------------------------------------------------------------------------------------
# Patterns. Tag names are fixed lowercase ASCII; only the think tag of the AU reward and of
# evaluation is matched case-insensitively (docs/METHOD.md 6.3).
# --------------------------------------------------------------------------------------------
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_PATTERN = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
AU_MENTION_PATTERN = re.compile(r"AU[0-9]+")
EVAL_TOKEN_SEPARATORS = re.compile(r"[,;\s]+")

# Every character that `\s` in FORMAT_PATTERN and `str.strip()` treat as whitespace (the
# `str.isspace()` set; tests check the list against all code points). Byte-level
# reimplementations of these rules need it in UTF-8.
WHITESPACE_CHARACTERS: frozenset[str] = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

ACCURACY_MODES = ("normalized", "exact")
AU_MODES = ("2f1-1", "f1")
REWARD_TERMS = ("format", "accuracy", "au")
DEFAULT_WEIGHTS: Mapping[str, float] = {"format": 1.0, "accuracy": 1.0, "au": 1.0}
DEFAULT_CLAMP: tuple[float, float] = (-10.0, 10.0)

# Reward given when a record has no emotion label (docs/METHOD.md 6.2).
NO_LABEL_ACCURACY = 0.5


# ------------------------------------------------------------------------------ format reward
def format_reward(text: str) -> float:
    """R_format (docs/METHOD.md 6.1): 1 iff the whole completion matches
    `<think>.*?</think>\\s*<answer>.*?</answer>` (dot matches newline, nothing before or after).

    Because the match must cover the whole text, the lazy `.*?` backtracks: the text must start
    with "<think>", end with "</answer>", and contain some "</think>" followed by optional
    whitespace and "<answer>" in between. Extra or nested tags inside either part are allowed
    ("<think>a</think><think>b</think><answer>c</answer>" scores 1). Tags are case-sensitive,
    and a leading or trailing space or newline makes it 0.
    """
    return 1.0 if FORMAT_PATTERN.fullmatch(text) else 0.0


# ---------------------------------------------------------------------------- accuracy reward
def extract_answer_last(text: str) -> str:
    """The prediction of the accuracy reward (docs/METHOD.md 6.2): the content of the LAST
    `<answer>...</answer>`, stripped; without an answer tag, the whole completion stripped.

    Matches are found left to right without overlap (`re.findall`), each ending at the first
    "</answer>" after its "<answer>": in "<answer>a<answer>b</answer>" the only match is
    "a<answer>b". Tags are case-sensitive; an unclosed "<answer>" is not a tag pair, so the
    whole text is the prediction.
    """
    contents = ANSWER_PATTERN.findall(text)
    if contents:
        return contents[-1].strip()
    return text.strip()


def label_is_empty(label: str | None) -> bool:
    """A record without an emotion: None, "" or only whitespace."""
    return label is None or label.strip() == ""


def normalized_label_key(text: str) -> str:
    """The comparison key of the normalised accuracy mode.

    The canonical emotion when the text names one (`emotions.try_normalize_emotion`: case-folded,
    whitespace collapsed, wrapping quotes/brackets and trailing punctuation removed, synonyms such
    as happy -> happiness mapped); otherwise the same cleaned text, so two identical unknown words
    still compare equal.
    """
    return try_normalize_emotion(text) or clean_label_text(text)


def accuracy_reward(text: str, label: str | None, mode: str = "normalized") -> float:
    """R_acc (docs/METHOD.md 6.2): the ground truth g is labels[0]; 0.5 (constant) when g is
    empty, else 1 iff the prediction equals g, else 0.

    * empty label (None, "" or whitespace only): 0.5 whatever the text;
    * mode "exact" (the reference code): `extract_answer_last(text) == label`, case-sensitive,
      no other normalisation (the label is compared as given);
    * mode "normalized" (default): both sides go through `normalized_label_key` and must be
      equal and non-empty. So "Happy." == "happiness", "SURPRISED" == "surprise", but
      "happiness and surprise" != "happiness" and "" never matches.
    """
    if mode not in ACCURACY_MODES:
        raise ValueError(f"accuracy mode {mode!r} is not one of {ACCURACY_MODES}")
    if label_is_empty(label):
        return NO_LABEL_ACCURACY
    prediction = extract_answer_last(text)
    if mode == "exact":
        return 1.0 if prediction == label else 0.0
    predicted_key = normalized_label_key(prediction)
    return 1.0 if predicted_key and predicted_key == normalized_label_key(label) else 0.0


# ---------------------------------------------------------------------------------- AU reward
def extract_think_first(text: str) -> str | None:
    """Content of the FIRST `<think>...</think>` (tags case-insensitive, content not stripped),
    or None when there is no closed think block (docs/METHOD.md 6.3: the FIRST
    `<think>...</think>`, tags matched case-insensitively)."""
    match = THINK_PATTERN.search(text)
    return match.group(1) if match else None


def au_mentions(text: str) -> frozenset[str]:
    """Unique `AU[0-9]+` runs in `text.upper()`: "au12" counts as "AU12", "AU120" is AU120 (the
    digit run is taken whole), "AU01" stays "AU01", "AU 12" and "AU-12" are not mentions, and a
    mention may sit inside a word ("BEAU1" holds AU1)."""
    return frozenset(AU_MENTION_PATTERN.findall(text.upper()))


def reward_aus(text: str) -> frozenset[str]:
    """P of the AU reward (docs/METHOD.md 6.3): the set of `AU<digits>` (ASCII digits, compared
    as strings: AU01 != AU1) found, after upper-casing, inside the FIRST `<think>...</think>`;
    no think block -> P = {}."""
    think = extract_think_first(text)
    if think is None:
        return frozenset()
    return au_mentions(think)


def ground_truth_aus(gt_aus: Iterable[str]) -> frozenset[str]:
    """T of the AU reward (docs/METHOD.md 6.3): the ground-truth AU set, upper-cased."""
    if isinstance(gt_aus, str):
        # Iterating a string would give its characters; "AU12" must arrive as ["AU12"].
        raise TypeError(f"AU sets must be collections of AU names, not the string {gt_aus!r}")
    return frozenset(str(au).upper() for au in gt_aus)


def f1_of_sets(predicted: frozenset[str], truth: frozenset[str]) -> float:
    """F1 = 2pr/(p+r), p = |P&T|/|P|, r = |P&T|/|T|; 0 when p + r = 0 (docs/METHOD.md 6.3).

    Both sets must be non-empty (the AU reward handles the empty cases before calling this).
    """
    overlap = len(predicted & truth)
    precision = overlap / len(predicted)
    recall = overlap / len(truth)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def au_reward(text: str, gt_aus: Iterable[str], mode: str = "2f1-1") -> float:
    """R_AU (docs/METHOD.md 6.3): 0 when T = {}; else -1 when P = {}; else 2*F1 - 1 (the
    reference code's form, the default). The paper's text uses R_AU = F1 in [0, 1] (mode "f1").

    * T = {}: 0.0 in both modes (nothing to reward or punish);
    * P = {} (no think block, or no AU mention in it): -1.0 in mode "2f1-1"; 0.0 in mode "f1",
      which is the F1 of an empty prediction against a non-empty truth, so both modes stay the
      same affine map of F1 (2f1-1 == 2 * f1 - 1) in every case except T = {};
    * otherwise 2*F1 - 1 in [-1, 1] ("2f1-1") or F1 in [0, 1] ("f1").
    """
    if mode not in AU_MODES:
        raise ValueError(f"AU reward mode {mode!r} is not one of {AU_MODES}")
    truth = ground_truth_aus(gt_aus)
    if not truth:
        return 0.0
    predicted = reward_aus(text)
    f1 = f1_of_sets(predicted, truth) if predicted else 0.0
    return 2.0 * f1 - 1.0 if mode == "2f1-1" else f1


# ------------------------------------------------------------------------------- total reward
def total_reward(
    text: str,
    label: str | None,
    gt_aus: Iterable[str],
    *,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    accuracy_mode: str = "normalized",
    au_mode: str = "2f1-1",
    clamp: tuple[float, float] | None = DEFAULT_CLAMP,
) -> dict[str, float]:
    """R = w_au R_AU + w_acc R_acc + w_format R_format, clamped (docs/METHOD.md 6.4: the rewards
    are summed per completion; the reference code clamps the sum to [-10, 10]).

    Returns {"format", "accuracy", "au": unweighted terms, "total": the clamped weighted sum}.
    `weights` may leave terms out (weight 0); unknown keys are an error. `clamp=None` disables
    clamping.
    """
    unknown = set(weights) - set(REWARD_TERMS)
    if unknown:
        raise ValueError(f"unknown reward weight(s) {sorted(unknown)}; terms are {REWARD_TERMS}")
    if clamp is not None and clamp[0] > clamp[1]:
        raise ValueError(f"clamp lower bound {clamp[0]} exceeds upper bound {clamp[1]}")
    terms = {
        "format": format_reward(text),
        "accuracy": accuracy_reward(text, label, mode=accuracy_mode),
        "au": au_reward(text, gt_aus, mode=au_mode),
    }
    total = sum(float(weights.get(name, 0.0)) * value for name, value in terms.items())
    if clamp is not None:
        total = min(max(total, float(clamp[0])), float(clamp[1]))
    return {**terms, "total": total}


# --------------------------------------------------------------------------------- evaluation
def eval_emotion(text: str) -> str:
    """The predicted emotion for accuracy (docs/METHOD.md 9.1): the first `<answer>` content (the
    whole output if none), split on commas, semicolons and whitespace, first token; "" when
    nothing is left.

    Note the difference from the accuracy reward, which takes the LAST answer and the whole
    stripped content. The token keeps its case and punctuation; compare with
    `eval_emotion_correct`.
    """
    match = ANSWER_PATTERN.search(text)
    content = match.group(1) if match else text
    for token in EVAL_TOKEN_SEPARATORS.split(content):
        if token:
            return token
    return ""


def eval_emotion_correct(text: str, label: str | None, *, normalize: bool = True) -> bool:
    """First token == labels[0] (docs/METHOD.md 9.2). With `normalize` both sides go through
    `normalized_label_key` (so "Happy." counts for "happiness"); without it the comparison is
    exact. A record without a label is never counted correct (callers should skip it)."""
    if label_is_empty(label):
        return False
    token = eval_emotion(text)
    if not normalize:
        return token == label
    key = normalized_label_key(token)
    return bool(key) and key == normalized_label_key(label)


def eval_aus(text: str) -> frozenset[str]:
    """Predicted AUs for AU F1 (docs/METHOD.md 9.1): the unique `AU<digits>` inside the first
    think block (the whole output if none). Same mention rule as the reward (`au_mentions`:
    upper-cased, ASCII digits, "AU01" kept as written), but a missing think block falls back to
    the whole output instead of the empty set."""
    think = extract_think_first(text)
    return au_mentions(text if think is None else think)


def binary_f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0.0 when the denominator is 0 (no positives predicted or
    present, the convention of scikit-learn's `zero_division=0`)."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return 0.0 if denominator == 0 else 2 * true_positives / denominator


@dataclasses.dataclass(frozen=True)
class AUF1Report:
    """AU F1 over a fixed AU list: per-AU F1, their mean (macro) and the pooled F1 (micro)."""

    per_au: dict[str, float]
    macro: float
    micro: float
    support: dict[str, int]


def au_f1(
    predicted: Sequence[Iterable[str]], truth: Sequence[Iterable[str]], au_list: Sequence[str]
) -> AUF1Report:
    """Binarise predictions and ground truth over `au_list` and score (docs/METHOD.md 9.2:
    binarised over the evaluated AU list; macro F1 = mean of per-AU F1, and micro F1).

    AUs outside `au_list` are ignored on both sides. An AU with no positive in either the
    predictions or the truth has F1 0.0 and still counts in the macro mean (the list is fixed by
    the protocol). Sets are compared as strings after upper-casing, like the reward.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} ground-truth sets")
    if not au_list:
        raise ValueError("au_list is empty: nothing to score")
    counts = {au.upper(): [0, 0, 0] for au in au_list}  # tp, fp, fn
    support = {au.upper(): 0 for au in au_list}
    for predicted_aus, true_aus in zip(predicted, truth, strict=True):
        predicted_set = ground_truth_aus(predicted_aus)
        true_set = ground_truth_aus(true_aus)
        for au, count in counts.items():
            in_prediction, in_truth = au in predicted_set, au in true_set
            count[0] += in_prediction and in_truth
            count[1] += in_prediction and not in_truth
            count[2] += in_truth and not in_prediction
            support[au] += in_truth
    per_au = {au: binary_f1(*count) for au, count in counts.items()}
    pooled = [sum(count[i] for count in counts.values()) for i in range(3)]
    return AUF1Report(
        per_au=per_au,
        macro=math.fsum(per_au.values()) / len(per_au),
        micro=binary_f1(*pooled),
        support=support,
    )


# ------------------------------------------------------------------------ stage 3 acceptance
def _au_sort_key(au: str) -> tuple[int, str]:
    digits = au[2:]
    return (int(digits) if digits.isdigit() else 1 << 30, au)


def _list_aus(aus: Iterable[str]) -> str:
    return ", ".join(sorted(aus, key=_au_sort_key))


@dataclasses.dataclass(frozen=True)
class SynthesisCheck:
    """What the stage 3 check found in one generated answer (docs/METHOD.md 8.3).

    `problems` are readable sentences, ready for the feedback section of the next prompt; the
    answer is accepted iff there are none.
    """

    think: str | None
    answer: str | None
    predicted_aus: frozenset[str]
    missing_aus: tuple[str, ...]
    extra_aus: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


def inspect_synthesis(
    text: str,
    gt_aus: Iterable[str],
    gt_label: str | None,
    *,
    require_format: bool = True,
) -> SynthesisCheck:
    """The stage 3 check (docs/METHOD.md 8.3): the AU set in the answer equals the ground-truth
    AU set (when the record has AUs), the label equals the ground-truth label (when it has one),
    and the think and answer tags are present and non-empty.

    Rules, chosen so an accepted answer earns the full stage 2 reward:
      * think: the first think block (`extract_think_first`) must exist and be non-blank;
      * answer: the last answer block (`extract_answer_last`'s tag) must exist and be non-blank;
      * AUs (only when `gt_aus` is non-empty): `reward_aus(text)` must equal the upper-cased
        ground truth as strings; missing and extra AUs are reported separately;
      * label (only when `gt_label` is non-empty): the last answer content must equal the label
        exactly (canonical spelling, as the SFT target teaches it); a synonym is reported as
        such;
      * `require_format` (our addition, on by default): `format_reward(text) == 1` and exactly
        one think and one answer block, so the kept description is a clean SFT target. Pass
        False for the reference check only.
    """
    problems: list[str] = []
    think = extract_think_first(text)
    answers = ANSWER_PATTERN.findall(text)
    answer = answers[-1].strip() if answers else None

    if think is None:
        problems.append("the reasoning is missing: there is no <think>...</think> block")
    elif not think.strip():
        problems.append("the <think>...</think> block is empty")
    if answer is None:
        problems.append("the final answer is missing: there is no <answer>...</answer> block")
    elif not answer:
        problems.append("the <answer>...</answer> block is empty")

    truth = ground_truth_aus(gt_aus)
    predicted = reward_aus(text)
    missing = tuple(sorted(truth - predicted, key=_au_sort_key)) if truth else ()
    extra = tuple(sorted(predicted - truth, key=_au_sort_key)) if truth else ()
    if missing:
        problems.append(
            f"these ground-truth AUs are not named in the reasoning: {_list_aus(missing)}"
        )
    if extra:
        problems.append(f"these AUs are named but are not in the ground truth: {_list_aus(extra)}")

    if not label_is_empty(gt_label) and answer and answer != gt_label:
        if normalized_label_key(answer) == normalized_label_key(gt_label):
            problems.append(f"the answer {answer!r} must be written exactly as {gt_label!r}")
        else:
            problems.append(f"the answer {answer!r} is wrong: the emotion is {gt_label!r}")

    if require_format:
        if format_reward(text) != 1.0:
            problems.append(
                "the reply must be exactly <think>...</think> followed by <answer>...</answer>, "
                "with nothing before or after"
            )
        if len(THINK_PATTERN.findall(text)) > 1:
            problems.append("there is more than one <think>...</think> block")
        if len(answers) > 1:
            problems.append("there is more than one <answer>...</answer> block")

    return SynthesisCheck(
        think=think,
        answer=answer,
        predicted_aus=predicted,
        missing_aus=missing,
        extra_aus=extra,
        problems=tuple(problems),
    )


def check_synthesis(
    text: str, gt_aus: Iterable[str], gt_label: str | None, *, require_format: bool = True
) -> list[str]:
    """The problems `inspect_synthesis` finds (empty list = accepted)."""
    return list(inspect_synthesis(text, gt_aus, gt_label, require_format=require_format).problems)
