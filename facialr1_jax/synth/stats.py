"""The yield report of one synthesis round: JSON, Markdown and a PNG.

Computed from the shards (never from in-memory counters), so a resumed run reports the whole
round. Yield = accepted / annotated, where annotated = accepted + rejected (inputs skipped because
they were already annotated are counted apart). Breakdowns:
  * per emotion (the record's ground-truth label; "(AU only)" for records without one);
  * per source dataset;
  * per attempt: how many were accepted at attempt n, and the cumulative yield after n attempts;
  * per candidate index (when several candidates are sampled per attempt);
  * rejection reasons: the problem categories of each rejected record's last attempt.

    WORKDIR/synth_stats.json, WORKDIR/synth_stats.md, WORKDIR/synth_yield.png
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

from facialr1_jax.fea.records import FEARecord
from facialr1_jax.synth.shards import write_json_atomic

STATS_FILE = "synth_stats.json"
STATS_MARKDOWN = "synth_stats.md"
STATS_PLOT = "synth_yield.png"
NO_LABEL = "(AU only)"
PROVENANCE_KEY = "synthesis"  # meta_info entry holding stage 3 provenance


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _breakdown(accepted: Sequence[FEARecord], rejected: Sequence[FEARecord], key) -> dict[str, dict[str, Any]]:
    kept = collections.Counter(key(r) for r in accepted)
    total = kept + collections.Counter(key(r) for r in rejected)
    return {name: {"annotated": total[name], "accepted": kept[name], "yield": _ratio(kept[name], total[name])}
            for name in sorted(total)}


def emotion_of(record: FEARecord) -> str:
    return record.label or NO_LABEL


def round_statistics(accepted: Sequence[FEARecord], rejected: Sequence[FEARecord], *, skipped: int = 0,
                     max_attempts: int, round_number: int = 1, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The statistics dict (see the module docstring) of one round's accepted and rejected records."""
    annotated = len(accepted) + len(rejected)
    attempts = collections.Counter(int(r.meta_info[PROVENANCE_KEY]["attempt"]) for r in accepted)
    candidates = collections.Counter(int(r.meta_info[PROVENANCE_KEY]["candidate"]) for r in accepted)
    by_attempt = []
    cumulative = 0
    for number in range(1, max_attempts + 1):
        cumulative += attempts[number]
        by_attempt.append({"attempt": number, "accepted": attempts[number], "cumulative_accepted": cumulative,
                           "cumulative_yield": _ratio(cumulative, annotated)})
    reasons: collections.Counter = collections.Counter()
    for record in rejected:
        history = record.meta_info[PROVENANCE_KEY].get("attempts") or []
        if history:
            reasons.update(set(history[-1]["categories"]))
        else:
            reasons[record.meta_info[PROVENANCE_KEY].get("category", "not attempted")] += 1
    stats = {
        "round": round_number,
        "annotated": annotated,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "skipped": int(skipped),
        "yield": _ratio(len(accepted), annotated),
        "by_emotion": _breakdown(accepted, rejected, emotion_of),
        "by_dataset": _breakdown(accepted, rejected, lambda r: r.dataset),
        "by_attempt": by_attempt,
        "by_candidate": {str(k): candidates[k] for k in sorted(candidates)},
        "rejection_reasons": dict(reasons.most_common()),
    }
    if extra:
        stats.update(extra)
    return stats


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown_report(stats: dict[str, Any]) -> str:
    """The statistics as Markdown tables."""
    lines = [f"# Stage 3 synthesis, round {stats['round']}", ""]
    lines += [f"Annotated {stats['annotated']} records: {stats['accepted']} accepted, {stats['rejected']} rejected "
              f"(yield {_pct(stats['yield'])}); {stats['skipped']} skipped as already annotated.", ""]
    if stats.get("checkpoint"):
        lines += [f"Model: `{stats['checkpoint']}`; decoding: {stats.get('decoding', '?')}.", ""]
    for title, key, column in (("Yield per emotion", "by_emotion", "emotion"),
                               ("Yield per source dataset", "by_dataset", "dataset")):
        lines += [f"## {title}", "", f"| {column} | annotated | accepted | yield |", "|---|---:|---:|---:|"]
        for name, row in stats[key].items():
            lines.append(f"| {name} | {row['annotated']} | {row['accepted']} | {_pct(row['yield'])} |")
        lines.append("")
    lines += ["## Acceptance per attempt", "", "| attempt | accepted | cumulative | cumulative yield |",
              "|---:|---:|---:|---:|"]
    for row in stats["by_attempt"]:
        lines.append(f"| {row['attempt']} | {row['accepted']} | {row['cumulative_accepted']} | "
                     f"{_pct(row['cumulative_yield'])} |")
    lines.append("")
    if len(stats["by_candidate"]) > 1:
        lines += ["## Accepted candidate index", "", "| candidate | accepted |", "|---:|---:|"]
        lines += [f"| {k} | {v} |" for k, v in stats["by_candidate"].items()]
        lines.append("")
    lines += ["## Rejection reasons (last attempt of each rejected record)", "", "| reason | records |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in stats["rejection_reasons"].items()] or ["| (none) | 0 |"]
    return "\n".join(lines) + "\n"


def plot_statistics(stats: dict[str, Any], output: str) -> str:
    """Four panels: yield per emotion, per dataset, cumulative yield per attempt, rejection reasons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=100)
    for axis, key, title in ((axes[0, 0], "by_emotion", "yield per emotion"),
                             (axes[0, 1], "by_dataset", "yield per source dataset")):
        names = list(stats[key])
        values = [100 * (stats[key][n]["yield"] or 0.0) for n in names]
        bars = axis.bar(range(len(names)), values, color="tab:blue")
        for bar, name in zip(bars, names):
            axis.annotate(str(stats[key][name]["accepted"]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.set_ylim(0, 105)
        axis.set_ylabel("accepted (%)")
        axis.set_title(title)
    attempts = [row["attempt"] for row in stats["by_attempt"]]
    axes[1, 0].plot(attempts, [100 * (row["cumulative_yield"] or 0.0) for row in stats["by_attempt"]], marker="o")
    axes[1, 0].bar(attempts, [100 * row["accepted"] / max(stats["annotated"], 1) for row in stats["by_attempt"]],
                   color="tab:orange", alpha=0.6, label="accepted at this attempt")
    axes[1, 0].set_xlabel("attempt")
    axes[1, 0].set_ylabel("% of annotated records")
    axes[1, 0].set_ylim(0, 105)
    axes[1, 0].set_title("cumulative yield per attempt")
    axes[1, 0].legend(fontsize=8)
    reasons = stats["rejection_reasons"]
    axes[1, 1].barh(range(len(reasons)), list(reasons.values()), color="tab:red")
    axes[1, 1].set_yticks(range(len(reasons)), list(reasons), fontsize=8)
    axes[1, 1].invert_yaxis()
    axes[1, 1].set_xlabel("rejected records")
    axes[1, 1].set_title("rejection reasons (last attempt)")
    figure.suptitle(f"Stage 3 round {stats['round']}: {stats['accepted']} of {stats['annotated']} accepted "
                    f"({_pct(stats['yield'])})")
    figure.tight_layout()
    figure.savefig(output)
    plt.close(figure)
    return output


def write_statistics(workdir: str, stats: dict[str, Any], *, plot: bool = True) -> dict[str, str]:
    """Writes the JSON, Markdown and (optionally) PNG files; returns their paths."""
    paths = {"json": os.path.join(workdir, STATS_FILE), "markdown": os.path.join(workdir, STATS_MARKDOWN)}
    write_json_atomic(paths["json"], stats)
    with open(paths["markdown"], "w", encoding="utf-8") as stream:
        stream.write(markdown_report(stats))
    if plot:
        paths["plot"] = plot_statistics(stats, os.path.join(workdir, STATS_PLOT))
    return paths
