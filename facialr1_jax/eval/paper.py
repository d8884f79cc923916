"""The numbers the Facial-R1 paper reports, in one table, so every comparison quotes the same values.

Source: Facial-R1 (arXiv 2511.10254, AAAI 2026), main results tables (the metrics are defined in
docs/METHOD.md section 9). All values are percentages, except ROUGE-L (F x 100), REGE (accuracy % +
ROUGE-L x 100) and the GPT score (a 1-10 rating by an external LLM judge, which this project does
not compute: it needs a network).

Keys are (metric, dataset profile name), named after the `metrics.json` metric of that kind
(`au_f1_macro`: the mean of per-AU F1). Which of our numbers a cell sits beside is stated by its
table (`PaperTable.beside`): the reading computed the way the authors' evaluation computes it
(exact emotion match; AU F1 over the union of the file's ground-truth AUs).
"""

from __future__ import annotations

import dataclasses

PAPER_CITATION = "Facial-R1, arXiv 2511.10254 (AAAI 2026), main results tables"


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One model's reported numbers: {(metric, profile): value}."""

    model: str
    values: dict[tuple[str, str], float]
    notes: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # why a cell is empty


FACIAL_R1 = PaperRow(
    model="Facial-R1 (paper)",
    values={
        ("au_f1_macro", "DISFA"): 73.1,
        ("au_f1_macro", "BP4D"): 67.4,
        ("au_f1_macro", "RAF-AU"): 70.2,
        ("au_f1_macro", "FABA"): 68.3,
        ("emotion_accuracy", "FER2013"): 69.8,
        ("emotion_accuracy", "AffectNet"): 65.2,
        ("emotion_accuracy", "RAF-DB"): 92.1,
        ("emotion_accuracy", "FABA"): 67.8,
        ("rege_emotion", "FABA"): 95.5,
        ("rouge_l", "FEA-20K"): 37.3,
        ("gpt_score", "FEA-20K"): 6.09,
    },
)

# Four zero-shot cells are confirmed against the paper's text. Issue 22 quotes RAF-AU 20.7, FABA AU
# 26.3, AffectNet 32.6, FABA emotion 63.0, REGE 46.4 and ROUGE-L 28.0 as read from the paper's table
# images, to be checked before use; we found no text that states them, so those cells stay empty and
# say why (`notes`).
_UNCHECKED = ("not stated in a form we could check (the issue quotes {value} read from the paper's "
              "table image); left empty")

QWEN_ZERO_SHOT = PaperRow(
    model="Qwen2.5-VL-7B zero-shot (paper)",
    values={
        ("au_f1_macro", "DISFA"): 22.1,
        ("au_f1_macro", "BP4D"): 16.9,
        ("emotion_accuracy", "FER2013"): 24.3,
        ("emotion_accuracy", "RAF-DB"): 34.3,
    },
    notes={
        ("au_f1_macro", "RAF-AU"): _UNCHECKED.format(value=20.7),
        ("au_f1_macro", "FABA"): _UNCHECKED.format(value=26.3),
        ("emotion_accuracy", "AffectNet"): _UNCHECKED.format(value=32.6),
        ("emotion_accuracy", "FABA"): _UNCHECKED.format(value=63.0),
        ("rege_emotion", "FABA"): _UNCHECKED.format(value=46.4),
        ("rouge_l", "FEA-20K"): _UNCHECKED.format(value=28.0),
    },
)

PAPER_ROWS: tuple[PaperRow, ...] = (QWEN_ZERO_SHOT, FACIAL_R1)


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One of the paper's result tables: a metric, the benchmarks (profiles) it has columns for, and
    which of our `metrics.json` numbers sit beside its cells.

    beside: our metric computed the way the paper's number was (the reference evaluation's reading),
        shown in the row right under the paper's rows; every cell of the table sits beside it.
    also: further readings of ours shown below it (e.g. AU F1 over the protocol's fixed AU list).
    """

    title: str
    metric: str
    profiles: tuple[str, ...]
    beside: str
    also: tuple[str, ...] = ()

    def our_metric(self, profile: str) -> str:
        """The name of our metric that the cell (self.metric, profile) sits beside."""
        if profile not in self.profiles:
            raise KeyError(f"the paper's table {self.title!r} has no column {profile!r}")
        return self.beside


# The layout of the paper's tables (docs/METHOD.md 9.2): AU recognition, emotion recognition, reasoning.
# The paper's numbers come from the authors' evaluation code, which compares emotions exactly and scores
# AU F1 over the union of the test file's ground-truth AUs (docs/METHOD.md 9.2), so those readings of
# ours sit beside them.
PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable("AU recognition: F1 (%)", "au_f1_macro", ("DISFA", "BP4D", "RAF-AU", "FABA"),
               beside="au_f1_macro_reference", also=("au_f1_macro",)),
    PaperTable(
        "Emotion recognition: accuracy (%)",
        "emotion_accuracy",
        ("FER2013", "AffectNet", "RAF-DB", "FABA"),
        beside="emotion_accuracy_exact", also=("emotion_accuracy_normalized",),
    ),
    PaperTable("Reasoning: REGE (FABA-Bench)", "rege_emotion", ("FABA",), beside="rege_emotion"),
    PaperTable("Reasoning: ROUGE-L (FEA-20K)", "rouge_l", ("FEA-20K",), beside="rouge_l"),
)


def paper_value(row: PaperRow, metric: str, profile: str) -> float | None:
    """The number `row` reports for `metric` on `profile`, or None when it reports none."""
    return row.values.get((metric, profile))


def paper_note(row: PaperRow, metric: str, profile: str) -> str | None:
    """Why the cell (metric, profile) of `row` is empty, when we know."""
    return row.notes.get((metric, profile))
