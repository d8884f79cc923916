"""Benchmark metrics of docs/METHOD.md section 9, computed from prediction texts and FEA records.

Pure Python (no JAX): the parsing of each output is the oracle's (`facialr1_jax.fea.answers`), so
the numbers here are by construction the ones the rewards are tested against.

    metrics = score_benchmark(predictions, records, get_profile("RAF-DB"))
    metrics.emotion_accuracy, metrics.au_f1_macro, metrics.rouge_l, metrics.to_json()

Every rate is a percentage in [0, 100], the unit of the paper's tables (docs/METHOD.md 9.2), and ROUGE-L
is the F-measure x 100. A metric that does not apply to a benchmark (emotion accuracy on DISFA,
AU F1 on FER2013, ROUGE-L without reference descriptions) is None, never 0.

Which records each metric counts:
  * emotion: records with a ground-truth label (labels[0]); others are skipped, not scored wrong.
  * AU F1: only on AU benchmarks (the profile has evaluated AUs, or scores the AUs present in the
    ground truth). A record counts when it carries AU annotation: its own `dataset` is an AU
    dataset (an empty AU list there means "no AU active", a valid negative), or, for a source
    without a profile, the record lists AUs. Emotion-only rows inside a mixed file (FER2013 rows
    of FEA-20K, whose AU list is empty because nobody annotated it) are therefore left out.
  * ROUGE-L and REGE: records with a non-blank reference `description`.

Two readings are reported beside the configured one, so a number can sit beside the paper's:
  * emotion accuracy both exact (the reference evaluation: first answer token == labels[0] as
    written) and normalised (`emotion_accuracy_exact`, `emotion_accuracy_normalized`);
    `emotion_accuracy` is the one `normalize` selects.
  * AU F1 over the profile's fixed list (`au_f1_macro` / `au_f1_micro`, the AU literature's
    protocol) and with the reference evaluation's scoring (`au_f1_macro_reference` /
    `au_f1_micro_reference`): every record of the file, binarised over the union of the
    ground-truth AUs in the file, the macro mean skipping AUs with no positive example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from facialr1_jax.fea.answers import (
    ANSWER_PATTERN,
    au_f1,
    eval_aus,
    eval_emotion,
    eval_emotion_correct,
    extract_think_first,
    format_reward,
    ground_truth_aus,
    label_is_empty,
    normalized_label_key,
)
from facialr1_jax.fea.aus import sort_aus
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.profiles import DatasetProfile, find_profile
from facialr1_jax.fea.records import FEARecord

# Column of the confusion matrix for a prediction that names no class of the benchmark: an empty
# or unparseable output, a word that is no emotion, or an emotion outside the benchmark's labels.
OTHER_COLUMN = "other"


def _percent(numerator: float, denominator: int) -> float | None:
    return None if denominator == 0 else 100.0 * numerator / denominator


# ------------------------------------------------------------------------------------- ROUGE-L
class RougeL:
    """ROUGE-L F-measure with Porter stemming (the `rouge-score` package, docs/METHOD.md 9.2).

    Built once per benchmark: constructing the scorer loads the stemmer. `rouge-score` lower-cases
    and keeps only alphanumeric tokens, so the tags contribute the words "think" and "answer" to
    both sides, as in the reference evaluation of whole outputs against whole descriptions.
    """

    def __init__(self):
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def __call__(self, prediction: str, reference: str) -> float:
        """F-measure in [0, 1] of `prediction` against `reference`."""
        return self._scorer.score(reference, prediction)["rougeL"].fmeasure


# ------------------------------------------------------------------------------ one prediction
@dataclasses.dataclass(frozen=True)
class ExampleScore:
    """How one output was read and scored; one line of the predictions file.

    predicted_emotion: the first answer token as written (docs/METHOD.md 9.1), "" when nothing is left.
    predicted_class: the benchmark class it names, or OTHER_COLUMN.
    emotion_correct: None when the record has no label; the comparison `normalize` selects, and
        emotion_correct_exact / emotion_correct_normalized both readings.
    predicted_aus: the AUs named in the first think block (whole output if none), sorted.
    rouge_l: F x 100 against the reference description; None without one.
    """

    id: str
    label: str | None
    predicted_emotion: str
    predicted_class: str
    emotion_correct: bool | None
    emotion_correct_exact: bool | None
    emotion_correct_normalized: bool | None
    true_aus: tuple[str, ...]
    predicted_aus: tuple[str, ...]
    au_scored: bool
    format_valid: bool
    has_think: bool
    has_answer: bool
    rouge_l: float | None

    @property
    def unparseable(self) -> bool:
        """No think block and no answer block: every metric had to fall back to the raw text."""
        return not self.has_think and not self.has_answer

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "true_aus": list(self.true_aus),
            "predicted_aus": list(self.predicted_aus),
            "unparseable": self.unparseable,
        }


def record_has_au_annotation(record: FEARecord, benchmark: DatasetProfile) -> bool:
    """Whether `record` takes part in AU F1 on `benchmark` (see the module docstring)."""
    if not benchmark.is_au_benchmark:
        return False
    own = find_profile(record.dataset)
    if own is not None:
        return own.is_au_benchmark
    return bool(record.aus)


def emotion_classes(benchmark: DatasetProfile, labels: Sequence[str | None]) -> tuple[str, ...]:
    """Rows of the confusion matrix: the benchmark's labels, then any other ground-truth label
    that occurs (canonical emotions in EMOTIONS order, then free-text labels sorted)."""
    present = {label for label in labels if not label_is_empty(label)}
    extra_emotions = [e for e in EMOTIONS if e in present and e not in benchmark.labels]
    extra_other = sorted(present - set(EMOTIONS) - set(benchmark.labels))
    return (*benchmark.labels, *extra_emotions, *extra_other)


def score_example(
    text: str,
    record: FEARecord,
    *,
    classes: Sequence[str],
    au_scored: bool,
    normalize: bool = True,
    rouge: RougeL | None = None,
) -> ExampleScore:
    """Reads one output the way docs/METHOD.md 9.1 describes and scores it against `record`."""
    token = eval_emotion(text)
    key = normalized_label_key(token) if normalize else token
    label = record.label
    return ExampleScore(
        id=record.id,
        label=label,
        predicted_emotion=token,
        predicted_class=key if key and key in classes else OTHER_COLUMN,
        emotion_correct=None
        if label_is_empty(label)
        else eval_emotion_correct(text, label, normalize=normalize),
        emotion_correct_exact=None if label_is_empty(label) else eval_emotion_correct(text, label, normalize=False),
        emotion_correct_normalized=None
        if label_is_empty(label)
        else eval_emotion_correct(text, label, normalize=True),
        true_aus=sort_aus(ground_truth_aus(record.aus)) if record.aus else (),
        predicted_aus=tuple(sorted(eval_aus(text), key=_mention_sort_key)),
        au_scored=au_scored,
        format_valid=format_reward(text) == 1.0,
        has_think=extract_think_first(text) is not None,
        has_answer=ANSWER_PATTERN.search(text) is not None,
        rouge_l=None
        if rouge is None or not record.description.strip()
        else 100.0 * rouge(text, record.description),
    )


def _mention_sort_key(au: str) -> tuple[int, str]:
    # Mentions keep their spelling ("AU01" stays apart from "AU1"), so sort by number, then text.
    return (int(au[2:]), au)


# ------------------------------------------------------------------------------- one benchmark
@dataclasses.dataclass(frozen=True)
class AUScores:
    """AU F1 (in %) over one AU list: macro (mean of per-AU F1), micro (pooled) and per AU.

    macro_over: the AUs the macro mean averages (the whole list, or with the reference's scoring
    the AUs with a positive example)."""

    au_list: tuple[str, ...]
    macro: float
    micro: float
    per_au: dict[str, float]
    support: dict[str, int]
    macro_over: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"au_list": list(self.au_list), "macro_over": list(self.macro_over)}


@dataclasses.dataclass(frozen=True)
class BenchmarkMetrics:
    """Everything measured on one benchmark (percentages; None = does not apply)."""

    benchmark: str
    profile: str
    num_examples: int
    # emotion
    num_labelled: int
    emotion_comparison: str  # "normalized" | "exact": the reading emotion_accuracy uses
    emotion_accuracy: float | None
    emotion_accuracy_exact: float | None
    emotion_accuracy_normalized: float | None
    emotion_mean_class_accuracy: float | None
    per_class_accuracy: dict[str, float | None]
    class_support: dict[str, int]
    confusion_rows: tuple[str, ...]
    confusion_columns: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    # AUs
    num_au_scored: int
    au_eval: AUScores | None
    au_all: AUScores | None
    au_reference: AUScores | None  # the reference evaluation's scoring (module docstring)
    # form and text
    format_valid: float | None
    num_format_invalid: int
    num_unparseable: int
    num_missing_think: int
    num_missing_answer: int
    num_emotion_other: int
    num_with_reference: int
    rouge_l: float | None

    @property
    def au_f1_macro(self) -> float | None:
        return None if self.au_eval is None else self.au_eval.macro

    @property
    def au_f1_micro(self) -> float | None:
        return None if self.au_eval is None else self.au_eval.micro

    @property
    def au_f1_macro_reference(self) -> float | None:
        return None if self.au_reference is None else self.au_reference.macro

    @property
    def au_f1_micro_reference(self) -> float | None:
        return None if self.au_reference is None else self.au_reference.micro

    @property
    def rege_emotion(self) -> float | None:
        """REGE with emotion recognition: accuracy % + ROUGE-L x 100 (docs/METHOD.md 9.2)."""
        if self.emotion_accuracy is None or self.rouge_l is None:
            return None
        return self.emotion_accuracy + self.rouge_l

    @property
    def rege_au(self) -> float | None:
        """REGE with AU recognition: macro AU F1 % + ROUGE-L x 100 (docs/METHOD.md 9.2)."""
        if self.au_f1_macro is None or self.rouge_l is None:
            return None
        return self.au_f1_macro + self.rouge_l

    def to_json(self) -> dict[str, Any]:
        """The `metrics.json` entry: the headline keys first, then the details."""
        return {
            "benchmark": self.benchmark,
            "profile": self.profile,
            "num_examples": self.num_examples,
            "emotion_accuracy": self.emotion_accuracy,
            "au_f1_micro": self.au_f1_micro,
            "au_f1_macro": self.au_f1_macro,
            "emotion_comparison": self.emotion_comparison,
            "emotion_accuracy_exact": self.emotion_accuracy_exact,
            "emotion_accuracy_normalized": self.emotion_accuracy_normalized,
            "au_f1_macro_reference": self.au_f1_macro_reference,
            "au_f1_micro_reference": self.au_f1_micro_reference,
            "format_valid": self.format_valid,
            "rouge_l": self.rouge_l,
            "rege_emotion": self.rege_emotion,
            "rege_au": self.rege_au,
            "num_unparseable": self.num_unparseable,
            "num_labelled": self.num_labelled,
            "emotion_mean_class_accuracy": self.emotion_mean_class_accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "class_support": self.class_support,
            "confusion": {
                "rows_true": list(self.confusion_rows),
                "columns_predicted": list(self.confusion_columns),
                "counts": [list(row) for row in self.confusion],
            },
            "num_au_scored": self.num_au_scored,
            "au_eval": None if self.au_eval is None else self.au_eval.to_json(),
            "au_all_ground_truth": None if self.au_all is None else self.au_all.to_json(),
            "au_reference_scoring": None if self.au_reference is None else self.au_reference.to_json(),
            "num_format_invalid": self.num_format_invalid,
            "num_missing_think": self.num_missing_think,
            "num_missing_answer": self.num_missing_answer,
            "num_emotion_other": self.num_emotion_other,
            "num_with_reference": self.num_with_reference,
        }


def _au_scores(scores: Sequence[ExampleScore], au_list: Sequence[str], *,
               skip_without_positives: bool = False) -> AUScores | None:
    """AU F1 over `au_list`; the macro mean over every AU of the list, or with
    `skip_without_positives` over those with at least one positive in the ground truth."""
    if not au_list:
        return None
    report = au_f1([s.predicted_aus for s in scores], [s.true_aus for s in scores], au_list)
    macro_over = tuple(au for au in report.per_au if not skip_without_positives or report.support[au] > 0)
    macro = math.fsum(report.per_au[au] for au in macro_over) / len(macro_over) if macro_over else 0.0
    return AUScores(
        au_list=tuple(au_list),
        macro=100.0 * macro,
        micro=100.0 * report.micro,
        per_au={au: 100.0 * f1 for au, f1 in report.per_au.items()},
        support=dict(report.support),
        macro_over=macro_over,
    )


def reference_au_scores(scores: Sequence[ExampleScore]) -> AUScores | None:
    """AU F1 as the reference evaluation scores a test file: every record (an empty AU list is a
    negative for every AU), binarised over the union of the ground-truth AUs in the file, macro over
    the AUs with a positive example; None when no record has an AU."""
    union = sort_aus({au for s in scores for au in s.true_aus})
    return _au_scores(scores, union, skip_without_positives=True) if union else None


def aggregate(
    scores: Sequence[ExampleScore],
    profile: DatasetProfile,
    *,
    benchmark: str | None = None,
    classes: Sequence[str] | None = None,
    normalize: bool = True,
) -> BenchmarkMetrics:
    """Benchmark metrics from per-example scores (see `score_benchmark`; `normalize` names the
    reading the scores' `emotion_correct` used)."""
    if classes is None:
        classes = emotion_classes(profile, [s.label for s in scores])
    columns = (*classes, OTHER_COLUMN)
    column_index = {name: i for i, name in enumerate(columns)}
    row_index = {name: i for i, name in enumerate(classes)}
    confusion = [[0] * len(columns) for _ in classes]
    correct = {name: 0 for name in classes}
    support = {name: 0 for name in classes}
    labelled = [s for s in scores if s.emotion_correct is not None]
    for s in labelled:
        row = row_index[s.label]
        confusion[row][column_index[s.predicted_class]] += 1
        support[s.label] += 1
        correct[s.label] += s.emotion_correct
    per_class = {name: _percent(correct[name], support[name]) for name in classes}
    class_rates = [rate for rate in per_class.values() if rate is not None]

    au_scored = [s for s in scores if s.au_scored]
    if au_scored:
        truth_sets = [s.true_aus for s in au_scored]
        au_eval = _au_scores(au_scored, profile.au_eval_list(truth_sets))
        au_all = _au_scores(au_scored, sort_aus({au for aus in truth_sets for au in aus}))
    else:
        au_eval = au_all = None

    with_reference = [s.rouge_l for s in scores if s.rouge_l is not None]
    return BenchmarkMetrics(
        benchmark=benchmark or profile.name,
        profile=profile.name,
        num_examples=len(scores),
        num_labelled=len(labelled),
        emotion_comparison="normalized" if normalize else "exact",
        emotion_accuracy=_percent(sum(s.emotion_correct for s in labelled), len(labelled)),
        emotion_accuracy_exact=_percent(sum(bool(s.emotion_correct_exact) for s in labelled), len(labelled)),
        emotion_accuracy_normalized=_percent(sum(bool(s.emotion_correct_normalized) for s in labelled),
                                             len(labelled)),
        emotion_mean_class_accuracy=math.fsum(class_rates) / len(class_rates)
        if class_rates
        else None,
        per_class_accuracy=per_class,
        class_support=support,
        confusion_rows=tuple(classes),
        confusion_columns=columns,
        confusion=tuple(tuple(row) for row in confusion),
        num_au_scored=len(au_scored),
        au_eval=au_eval,
        au_all=au_all,
        au_reference=reference_au_scores(scores),
        format_valid=_percent(sum(s.format_valid for s in scores), len(scores)),
        num_format_invalid=sum(not s.format_valid for s in scores),
        num_unparseable=sum(s.unparseable for s in scores),
        num_missing_think=sum(not s.has_think for s in scores),
        num_missing_answer=sum(not s.has_answer for s in scores),
        num_emotion_other=sum(s.predicted_class == OTHER_COLUMN for s in labelled),
        num_with_reference=len(with_reference),
        rouge_l=math.fsum(with_reference) / len(with_reference) if with_reference else None,
    )


def score_benchmark(
    predictions: Sequence[str],
    records: Sequence[FEARecord],
    profile: DatasetProfile,
    *,
    benchmark: str | None = None,
    normalize: bool = True,
    rouge: bool = True,
) -> tuple[BenchmarkMetrics, list[ExampleScore]]:
    """Scores `predictions[i]` against `records[i]` on the benchmark described by `profile`.

    normalize: compare emotions through `normalized_label_key` ("Happy." counts for happiness);
        False compares the first answer token to labels[0] exactly.
    rouge: compute ROUGE-L (and REGE) where records have reference descriptions.
    Returns the aggregate metrics and the per-example scores (for the predictions file).
    """
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    for index, text in enumerate(predictions):
        if not isinstance(text, str):
            raise TypeError(f"prediction {index} is {type(text).__name__}, not a str")
    classes = emotion_classes(profile, [r.label for r in records])
    scorer = RougeL() if rouge and any(r.description.strip() for r in records) else None
    scores = [
        score_example(
            text,
            record,
            classes=classes,
            au_scored=record_has_au_annotation(record, profile),
            normalize=normalize,
            rouge=scorer,
        )
        for text, record in zip(predictions, records, strict=True)
    ]
    return aggregate(scores, profile, benchmark=benchmark, classes=classes, normalize=normalize), scores
