"""Writing evaluation results: metrics.json, report.md, confusion-matrix PNGs and console tables.

    write_report(workdir, {"rafdb": metrics, ...}, run_info={...})

The console and Markdown comparison tables follow the layout of the paper's result tables
(`paper.PAPER_TABLES`): one column per benchmark, the paper's rows (zero-shot Qwen2.5-VL and
Facial-R1) above ours. Benchmarks the paper does not report (the built-in synthetic set) get their
own columns with "-" in the paper rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from facialr1_jax.eval import paper
from facialr1_jax.eval.metrics import BenchmarkMetrics

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
MISSING = "-"

# Metrics whose table may also hold benchmarks the paper does not report (by the paper table's metric).
_OPEN_METRICS = ("au_f1_macro", "emotion_accuracy", "rouge_l")


def _fmt(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def metric_value(metrics: BenchmarkMetrics, metric: str) -> float | None:
    """A headline metric by its `metrics.json` name (emotion_accuracy, au_f1_macro, rege_emotion, ...)."""
    value = getattr(metrics, metric, None)
    return value if value is None or isinstance(value, float) else None


def confusion_png_name(benchmark: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in benchmark)
    return f"confusion-{safe}.png"


# ----------------------------------------------------------------------------- paper tables
def comparison_tables(
    results: Mapping[str, BenchmarkMetrics], *, model_name: str = "this model"
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each paper table that has something to show.

    A paper table is shown when one of our benchmarks has the metric its cells sit beside
    (`PaperTable.beside`); its columns are the paper's benchmarks (ours filled in where evaluated,
    "-" otherwise) followed by our other benchmarks. Our rows are labelled with the `metrics.json`
    name of the number they hold: first the one the paper's cells sit beside, then `also`.
    """
    tables = []
    for table in paper.PAPER_TABLES:
        columns: list[tuple[str, str, BenchmarkMetrics | None]] = []  # (header, profile, ours)
        for profile in table.profiles:
            matching = [(name, m) for name, m in results.items() if m.profile == profile]
            if not matching:
                columns.append((profile, profile, None))
            for name, m in matching:
                header = profile if name.casefold() == profile.casefold() or len(matching) == 1 else (
                    f"{profile} ({name})"
                )
                columns.append((header, profile, m))
        if table.metric in _OPEN_METRICS:
            for name, m in results.items():
                if m.profile not in table.profiles and metric_value(m, table.beside) is not None:
                    columns.append((name, m.profile, m))
        ours = {metric: [None if m is None else metric_value(m, metric) for _, _, m in columns]
                for metric in (table.beside, *table.also)}
        if all(value is None for value in ours[table.beside]):
            continue
        header = ["model", *(h for h, _, _ in columns)]
        rows = [
            [row.model, *(_fmt(paper.paper_value(row, table.metric, p)) for _, p, _ in columns)]
            for row in paper.PAPER_ROWS
        ]
        rows += [[f"{model_name}: {metric}", *(_fmt(value) for value in values)] for metric, values in ours.items()]
        tables.append((table.title, header, rows))
    return tables


def comparison_notes() -> list[str]:
    """One line per paper cell left empty on purpose, saying why (`paper.PaperRow.notes`)."""
    return [f"{row.model}, {metric} on {profile}: {note}"
            for row in paper.PAPER_ROWS for (metric, profile), note in row.notes.items()]


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(out)


def summary_rows(results: Mapping[str, BenchmarkMetrics]) -> tuple[list[str], list[list[str]]]:
    """One row per benchmark with every headline number."""
    header = [
        "benchmark",
        "N",
        "emotion acc",
        "emotion acc (exact)",
        "emotion acc (normalised)",
        "AU F1 macro",
        "AU F1 micro",
        "AU F1 macro (ref.)",
        "format valid",
        "ROUGE-L",
        "REGE (emo)",
        "unparseable",
    ]
    rows = [
        [
            name,
            str(m.num_examples),
            _fmt(m.emotion_accuracy),
            _fmt(m.emotion_accuracy_exact),
            _fmt(m.emotion_accuracy_normalized),
            _fmt(m.au_f1_macro),
            _fmt(m.au_f1_micro),
            _fmt(m.au_f1_macro_reference),
            _fmt(m.format_valid),
            _fmt(m.rouge_l),
            _fmt(m.rege_emotion),
            str(m.num_unparseable),
        ]
        for name, m in results.items()
    ]
    return header, rows


def console_report(results: Mapping[str, BenchmarkMetrics], *, model_name: str = "this model") -> str:
    """The text printed at the end of an evaluation: our numbers, then the paper's tables."""
    parts = ["Evaluation results (%)", _text_table(*summary_rows(results))]
    for title, header, rows in comparison_tables(results, model_name=model_name):
        parts += ["", title, _text_table(header, rows)]
    parts += ["", f"Paper numbers: {paper.PAPER_CITATION}. Our rows name the metrics.json number they hold; the "
              "paper's cells sit beside the first (exact emotion match, AU F1 with the reference's scoring)."]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- report.md
def markdown_report(
    results: Mapping[str, BenchmarkMetrics],
    *,
    run_info: Mapping[str, Any] | None = None,
    model_name: str = "this model",
    images: Mapping[str, str] | None = None,
) -> str:
    """report.md: headline table, paper comparison, then per benchmark the details."""
    images = images or {}
    out = ["# Evaluation report", ""]
    if run_info:
        out += [f"- {key}: `{value if isinstance(value, str) else json.dumps(value)}`"
                for key, value in run_info.items()] + [""]
    out += [
        "All numbers are percentages; ROUGE-L is the F-measure x 100 (Porter stemming); REGE is "
        "emotion accuracy + ROUGE-L. An output is *unparseable* when it has neither a "
        "`<think>` nor an `<answer>` block (metrics then read the raw text, docs/METHOD.md 9.1).",
        "",
        "## Summary",
        "",
        _markdown_table(*summary_rows(results)),
    ]
    tables = comparison_tables(results, model_name=model_name)
    if tables:
        out += ["", "## Against the paper", "", f"Paper numbers: {paper.PAPER_CITATION}.",
                "", "Each of our rows names the `metrics.json` number it holds. The paper's cells sit beside the "
                "first of them, computed as the authors' evaluation computes it: emotions compared exactly "
                "(`emotion_accuracy_exact`), AU F1 over the union of the file's ground-truth AUs with the macro "
                "mean skipping AUs without a positive (`au_f1_macro_reference`). The rows below it are our other "
                "readings (normalised labels; AU F1 over the protocol's fixed AU list)."]
        for title, header, rows in tables:
            out += ["", f"### {title}", "", _markdown_table(header, rows)]
        notes = comparison_notes()
        if notes:
            out += ["", "Empty paper cells:", ""] + [f"- {line}" for line in notes]
    for name, m in results.items():
        out += ["", f"## {name} (profile {m.profile})", ""]
        out += [
            f"- examples: {m.num_examples}; with an emotion label: {m.num_labelled}; "
            f"AU-scored: {m.num_au_scored}; with a reference description: {m.num_with_reference}",
            f"- format valid: {_fmt(m.format_valid)}% ({m.num_format_invalid} invalid); "
            f"unparseable: {m.num_unparseable}; no think block: {m.num_missing_think}; "
            f"no answer block: {m.num_missing_answer}; answer names no class of this "
            f"benchmark: {m.num_emotion_other}",
        ]
        if m.emotion_accuracy is not None:
            out += [
                f"- emotion accuracy ({m.emotion_comparison}): {_fmt(m.emotion_accuracy)}%; exact: "
                f"{_fmt(m.emotion_accuracy_exact)}%; normalised: {_fmt(m.emotion_accuracy_normalized)}%; "
                f"mean per-class accuracy: {_fmt(m.emotion_mean_class_accuracy)}%",
                "",
                "### Per-class accuracy",
                "",
                _markdown_table(
                    ["class", "support", "accuracy"],
                    [
                        [c, m.class_support[c], _fmt(m.per_class_accuracy[c])]
                        for c in m.confusion_rows
                    ],
                ),
                "",
                "### Confusion matrix (rows: truth, columns: prediction)",
                "",
                _markdown_table(
                    ["true \\ predicted", *m.confusion_columns],
                    [[row, *counts] for row, counts in zip(m.confusion_rows, m.confusion)],
                ),
            ]
            if name in images:
                out += ["", f"![confusion matrix of {name}]({images[name]})"]
        for title, scores in (("evaluated AU subset", m.au_eval), ("all ground-truth AUs", m.au_all),
                              ("reference evaluation's scoring: every record, the file's ground-truth AUs",
                               m.au_reference)):
            if scores is None:
                continue
            macro_over = "" if len(scores.macro_over) == len(scores.au_list) else (
                f" (macro over the {len(scores.macro_over)} AUs with a positive example)")
            out += [
                "",
                f"### AU F1 over the {title} ({len(scores.au_list)} AUs)",
                "",
                f"macro {_fmt(scores.macro)}%{macro_over}, micro {_fmt(scores.micro)}%",
                "",
                _markdown_table(
                    ["AU", "support", "F1"],
                    [[au, scores.support[au], _fmt(scores.per_au[au])] for au in scores.au_list],
                ),
            ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------- PNG plots
def plot_confusion(metrics: BenchmarkMetrics, path: str | os.PathLike) -> None:
    """Confusion matrix as a PNG: colours are row-normalised (recall), cells show the counts."""
    import matplotlib

    matplotlib.use("Agg")  # Never needs a display.
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(metrics.confusion, dtype=np.float64).reshape(
        len(metrics.confusion_rows), len(metrics.confusion_columns)
    )
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 1.0 + 0.7 * len(metrics.confusion_columns)
    figure, axes = plt.subplots(figsize=(size + 1.5, 0.8 * size + 1.0))
    try:
        image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
        axes.set_xticks(range(len(metrics.confusion_columns)), metrics.confusion_columns, rotation=45,
                        ha="right")
        axes.set_yticks(range(len(metrics.confusion_rows)), metrics.confusion_rows)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{metrics.benchmark}: accuracy {_fmt(metrics.emotion_accuracy)}% "
                       f"(n={metrics.num_labelled})")
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if fractions[row, column] > 0.5 else "black"
                axes.text(column, row, f"{int(count)}", ha="center", va="center", color=colour,
                          fontsize=8)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the row")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


# ------------------------------------------------------------------------------- everything
def metrics_document(
    results: Mapping[str, BenchmarkMetrics], run_info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The content of metrics.json: run facts and one entry per benchmark."""
    return {
        "run": dict(run_info or {}),
        "units": "percent (ROUGE-L: F x 100; REGE: accuracy % + ROUGE-L x 100)",
        "paper": paper.PAPER_CITATION,
        "benchmarks": {name: m.to_json() for name, m in results.items()},
    }


def write_report(
    directory: str | os.PathLike,
    results: Mapping[str, BenchmarkMetrics],
    *,
    run_info: Mapping[str, Any] | None = None,
    model_name: str = "this model",
    plots: bool = True,
) -> dict[str, str]:
    """Writes metrics.json, report.md and one confusion PNG per benchmark with emotion labels.

    Returns {"metrics": path, "report": path, "confusion/<benchmark>": path, ...}.
    """
    os.makedirs(directory, exist_ok=True)
    written: dict[str, str] = {}
    images: dict[str, str] = {}
    if plots:
        for name, m in results.items():
            if m.num_labelled:
                file_name = confusion_png_name(name)
                plot_confusion(m, os.path.join(directory, file_name))
                images[name] = file_name
                written[f"confusion/{name}"] = os.path.join(directory, file_name)
    metrics_path = os.path.join(directory, METRICS_FILE)
    _write_text(metrics_path, json.dumps(metrics_document(results, run_info), indent=2) + "\n")
    report_path = os.path.join(directory, REPORT_FILE)
    _write_text(
        report_path,
        markdown_report(results, run_info=run_info, model_name=model_name, images=images),
    )
    written["metrics"] = metrics_path
    written["report"] = report_path
    return written


def _write_text(path: str, text: str) -> None:
    """Atomic write: a reader never sees half a report."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
