"""The numbers the Facial-R1 paper reports, in one table, so every comparison quotes the same values.

Source: Facial-R1 (arXiv 2511.10254, AAAI 2026), main results tables (the metrics are defined in
docs/METHOD.md section 9). All values are percentages, except ROUGE-L (F x 100), REGE (accuracy % +
ROUGE-L x 100) and the GPT score (a 1-10 rating by an external LLM judge, which this project does
not compute: it needs a network).

Keys are (metric, dataset profile name); the metric names are those of `metrics.json`
(`au_f1_macro`: the AU literature reports the mean of per-AU F1, which is our macro F1).
"""

from __future__ import annotations

import dataclasses

PAPER_CITATION = "Facial-R1, arXiv 2511.10254 (AAAI 2026), main results tables"


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One model's reported numbers: {(metric, profile): value}."""

    model: str
    values: dict[tuple[str, str], float]


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

QWEN_ZERO_SHOT = PaperRow(
    model="Qwen2.5-VL-7B zero-shot (paper)",
    values={
        ("au_f1_macro", "DISFA"): 22.1,
        ("au_f1_macro", "BP4D"): 16.9,
        ("emotion_accuracy", "FER2013"): 24.3,
        ("emotion_accuracy", "RAF-DB"): 34.3,
    },
)

PAPER_ROWS: tuple[PaperRow, ...] = (QWEN_ZERO_SHOT, FACIAL_R1)


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One of the paper's result tables: a metric and the benchmarks (profiles) it has columns for."""

    title: str
    metric: str
    profiles: tuple[str, ...]


# The layout of the paper's tables (docs/METHOD.md 9.2): AU recognition, emotion recognition, reasoning.
PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable("AU recognition: F1 (%)", "au_f1_macro", ("DISFA", "BP4D", "RAF-AU", "FABA")),
    PaperTable(
        "Emotion recognition: accuracy (%)",
        "emotion_accuracy",
        ("FER2013", "AffectNet", "RAF-DB", "FABA"),
    ),
    PaperTable("Reasoning: REGE (FABA-Bench)", "rege_emotion", ("FABA",)),
    PaperTable("Reasoning: ROUGE-L (FEA-20K)", "rouge_l", ("FEA-20K",)),
)


def paper_value(row: PaperRow, metric: str, profile: str) -> float | None:
    """The number `row` reports for `metric` on `profile`, or None when it reports none."""
    return row.values.get((metric, profile))
