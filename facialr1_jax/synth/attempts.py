"""One record's way through stage 3: its prompt, its attempts and the feedback they leave.

A record starts with the synthesis prompt (`fea.prompts.build_synthesis_instruction`: the task
instruction with the dataset's allowed labels, plus the ground-truth section). Each rejected
attempt appends a feedback section (`fea.prompts.build_feedback`: the previous answer quoted, its
problems listed), so attempt n sees the feedback of attempts 1..n-1 (cumulative, as the reference).
`feedback_history` > 0 keeps only the latest sections; when a prompt would exceed the token budget
the oldest sections are dropped until it fits, and a record whose bare synthesis prompt does not
fit is rejected without generation.

Prompt mode "task" (an option, not the method) sends the plain task prompt instead: the model
answers as it was trained and only the check sees the ground truth (rejection sampling). Small
models trained on the task prompt alone can fail to follow the longer synthesis prompt; sampled
candidates (synth.num_candidates > 1) then give each attempt fresh answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from facialr1_jax.data.chat import QWEN_SPECIAL_TOKENS
from facialr1_jax.data.examples import default_instruction, synthesis_instruction
from facialr1_jax.fea.prompts import build_feedback
from facialr1_jax.fea.records import FEARecord


PROMPT_MODES = ("synthesis", "task")


def quotable(answer: str) -> str:
    """`answer` made safe to quote inside a prompt: control-token strings are removed (a prompt
    holding them would be read as the control tokens themselves)."""
    for token in QWEN_SPECIAL_TOKENS:
        answer = answer.replace(token, "")
    return answer


@dataclasses.dataclass(frozen=True)
class Attempt:
    """A rejected attempt: the answer quoted in the next feedback section and what was wrong."""

    number: int  # 1-based
    answer: str
    problems: tuple[str, ...]
    categories: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.number, "answer": self.answer, "problems": list(self.problems),
                "categories": list(self.categories)}


@dataclasses.dataclass(frozen=True)
class Acceptance:
    """The answer kept for a record."""

    attempt: int  # 1-based
    candidate: int  # 0-based index among the attempt's candidates
    answer: str


@dataclasses.dataclass
class RecordJob:
    """A record being annotated. `index` is its position in the input (it fixes the output order)."""

    index: int
    record: FEARecord
    images: Sequence[Any]
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    accepted: Acceptance | None = None
    given_up: str | None = None  # why the record left the loop without an accepted answer, if not attempts

    @property
    def finished(self) -> bool:
        return self.accepted is not None or self.given_up is not None

    def base_instruction(self, variant: str) -> str:
        return synthesis_instruction(self.record, variant)

    def feedback_sections(self, history: int) -> list[str]:
        """Feedback of the rejected attempts, oldest first; only the latest `history` (0 = all)."""
        kept = self.attempts[-history:] if history > 0 else self.attempts
        return [build_feedback(quotable(a.answer), a.problems) for a in kept]

    def instruction(self, variant: str, history: int, fits: Callable[[str], bool],
                    mode: str = "synthesis") -> tuple[str | None, int]:
        """(the user-turn text of the next attempt, feedback sections dropped to fit), or (None, 0)
        when even the bare prompt does not fit (`fits(text)` says whether a text does).

        mode "synthesis": the synthesis prompt plus the feedback of the rejected attempts;
        mode "task": the plain task prompt the model was trained on (no ground truth, no feedback),
        so stage 3 becomes rejection sampling: only the check sees the ground truth.
        """
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode {mode!r} is not one of {PROMPT_MODES}")
        if mode == "task":
            text = default_instruction(self.record, variant)
            return (text, 0) if fits(text) else (None, 0)
        base = self.base_instruction(variant)
        sections = self.feedback_sections(history)
        for dropped in range(len(sections) + 1):
            text = "\n\n".join([base, *sections[dropped:]])
            if fits(text):
                return text, dropped
        return None, 0
