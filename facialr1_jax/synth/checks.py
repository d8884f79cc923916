"""The automatic check of one generated answer against its record's ground truth (docs/METHOD.md 8.3).

The reference check ("AU set in the answer == ground-truth AU set (when the record has AUs),
label == ground-truth label (when it has one), think and answer tags present and non-empty") is
the oracle's `fea.answers.inspect_synthesis`; this module selects its parts by configuration and
adds the optional rules:

  * AUs: "exact" (the oracle's set equality), "f1" (F1 of the AUs named in the first think block
    against the ground truth >= `au_f1_threshold`, the lenient variant) or "off";
  * label: on (the oracle's exact canonical spelling) or off;
  * format (on by default, the oracle's `require_format`): exactly one think block then one
    answer block and nothing else, so the kept description is a clean SFT target;
  * hedges (off by default): none of `hedge_words` in the reasoning (the prompt forbids them);
  * control tokens: none of the chat template's special-token strings (an SFT target must be
    plain text);
  * duplicates: a reasoning text already kept for another record (checked by the caller, which
    knows what was kept: `description_key`, `duplicate_problem`).

Every failed rule gives a readable sentence (quoted back to the model in the feedback section)
and a short category name (for the rejection statistics).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from facialr1_jax.data.chat import QWEN_SPECIAL_TOKENS
from facialr1_jax.fea.answers import extract_think_first, f1_of_sets, ground_truth_aus, inspect_synthesis, reward_aus
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.synth.settings import SynthSettings

# Category names of the rejection statistics.
THINK = "think missing or empty"
ANSWER = "answer missing or empty"
MISSING_AUS = "ground-truth AUs missing"
EXTRA_AUS = "AUs outside the ground truth"
AU_F1 = "AU F1 below threshold"
LABEL = "wrong label"
FORMAT = "format"
HEDGE = "negation or hedge"
DUPLICATE = "duplicate description"
UNFINISHED = "cut off at max_new_tokens"
PROMPT_TOO_LONG = "prompt too long"


def default_hedge_words() -> tuple[str, ...]:
    """The words the built-in reasoning writer never uses and the prompt forbids (docs/METHOD.md 3.2)."""
    from facialr1_jax.data.reasoning import BANNED_WORDS

    return tuple(BANNED_WORDS)


def hedge_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """Whole-word, case-insensitive matcher for `words`; "not" also catches the contraction n't."""
    words = tuple(dict.fromkeys(word.lower() for word in words))
    if not words:
        return None
    alternatives = [r"\b(?:" + "|".join(re.escape(word) for word in words) + r")\b"]
    if "not" in words:
        alternatives.append(r"n't\b")
    return re.compile("|".join(alternatives), re.IGNORECASE)


def description_key(text: str) -> str:
    """What two descriptions must share to count as the same text: case and spacing ignored."""
    return " ".join(text.split()).casefold()


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The verdict on one answer: problems (sentences for feedback) and their categories."""

    problems: tuple[str, ...]
    categories: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclasses.dataclass(frozen=True)
class AnswerChecker:
    """The configured check. Build it once per run (`from_settings`); calls are pure."""

    au_mode: str = "exact"
    au_f1_threshold: float = 0.8
    check_label: bool = True
    require_format: bool = True
    hedges: re.Pattern[str] | None = None

    @classmethod
    def from_settings(cls, settings: SynthSettings) -> "AnswerChecker":
        words = settings.hedge_words or default_hedge_words()
        return cls(au_mode=settings.check_aus, au_f1_threshold=float(settings.au_f1_threshold),
                   check_label=settings.check_label, require_format=settings.require_format,
                   hedges=hedge_pattern(words) if settings.ban_hedges else None)

    def check(self, text: str, record: FEARecord) -> CheckResult:
        """Problems of `text` as the answer for `record` (empty = accepted)."""
        exact_aus = record.aus if self.au_mode == "exact" else ()
        label = record.label if self.check_label else None
        found = inspect_synthesis(text, exact_aus, label, require_format=self.require_format)
        problems: list[str] = list(found.problems)
        categories: list[str] = oracle_categories(found, label)

        if self.au_mode == "f1" and record.aus:
            truth = ground_truth_aus(record.aus)
            predicted = reward_aus(text)
            f1 = f1_of_sets(predicted, truth) if predicted else 0.0
            if f1 < self.au_f1_threshold:
                missing = ", ".join(au for au in record.aus if au not in predicted) or "none"
                extra = ", ".join(sorted(predicted - truth)) or "none"
                problems.append(f"the AUs named in the reasoning match the ground truth with F1 {f1:.2f}, below "
                                f"{self.au_f1_threshold:.2f} (missing: {missing}; not in the ground truth: {extra})")
                categories.append(AU_F1)

        control = [token for token in QWEN_SPECIAL_TOKENS if token in text]
        if control:
            problems.append("the reply contains control tokens (" + ", ".join(control) + "); write plain text only")
            categories.append(FORMAT)

        if self.hedges is not None:
            think = extract_think_first(text)
            hits = sorted({match.group(0).lower() for match in self.hedges.finditer(think or "")})
            if hits:
                problems.append("the reasoning uses negations or hedges (" + ", ".join(repr(h) for h in hits)
                                + "); describe only what is present")
                categories.append(HEDGE)
        return CheckResult(tuple(problems), tuple(categories))


def oracle_categories(found, label: str | None) -> list[str]:
    """The statistics category of each of the oracle's problem sentences, in its order.

    `inspect_synthesis` lists its problems in a fixed order (think, answer, missing AUs, extra
    AUs, label, then the format rules); the categories are counted from its structured fields
    (never from the wording), and whatever remains is a format problem.
    """
    categories = []
    if found.think is None or not found.think.strip():
        categories.append(THINK)
    if found.answer is None or not found.answer:
        categories.append(ANSWER)
    if found.missing_aus:
        categories.append(MISSING_AUS)
    if found.extra_aus:
        categories.append(EXTRA_AUS)
    if label is not None and found.answer and found.answer != label:
        categories.append(LABEL)
    if len(categories) > len(found.problems):
        raise AssertionError(f"the oracle reported {len(found.problems)} problems but its fields imply "
                             f"{categories}: fea.answers.inspect_synthesis changed its rules")
    return categories + [FORMAT] * (len(found.problems) - len(categories))


def duplicate_problem(owner_id: str) -> str:
    """The feedback sentence for a reasoning text that another record already holds."""
    return (f"this reasoning repeats word for word the one already kept for another image ({owner_id}); "
            "describe this face in your own words")
