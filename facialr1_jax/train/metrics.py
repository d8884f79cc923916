"""Training metrics: a JSONL log, TensorBoard event files, a console progress bar, a loss-curve PNG.

`MetricsLogger` is shared by every stage. Only process 0 writes anything (files and console), the
other processes get a logger whose methods do nothing, so callers never branch on the process.

Files under the workdir:
    metrics.jsonl       one JSON object per logged step and split: {"step", "split", "time", ...scalars}
    tensorboard/        event files (tensorboardX), scalars named "<split>/<name>"
    loss_curve.png      train (and eval) loss against step, written by `close()`

Resuming: a run restarted from a checkpoint at step k first drops the JSONL rows with step > k (a
crash after the last checkpoint would otherwise leave rows that the resumed run writes again), so
the file always describes one consistent trajectory.

The workdir may be a local folder or a URL such as gs://bucket/run (`parallel.files`, etils.epath):
JSONL files on an object store, which cannot append, are rewritten whole at every write.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

from facialr1_jax.parallel import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE_FILE = "loss_curve.png"


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: numpy / JAX scalars become Python numbers; non-finite floats stay visible."""
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl (optionally only one split), in file order."""
    rows = read_jsonl_rows(os.path.join(workdir, METRICS_FILE))
    return [row for row in rows if split is None or row.get("split") == split]


class StepJsonl:
    """An append-only JSONL file of per-step rows that stays consistent across resumes.

    Opening it at `start_step` first drops rows whose "step" is larger (written after the last
    checkpoint by a run that then crashed), so re-running those steps does not duplicate them.
    A local file is appended to and flushed per row; on an object store (gs://...), where objects
    cannot be appended to, the whole file is rewritten at every row.
    """

    def __init__(self, path: str, start_step: int = 0):
        self.path = path
        self._remote = files.is_remote(path)
        kept = []
        if files.exists(path):
            with files.open_file(path) as stream:
                kept = [line if line.endswith("\n") else line + "\n" for line in stream
                        if line.strip() and int(json.loads(line).get("step", 0)) <= start_step]
        if self._remote:
            self._lines = kept
            files.write_text(path, "".join(kept))
            self._stream = None
        else:
            files.makedirs(os.path.dirname(files.resolve(path)))
            with open(path, "w", encoding="utf-8") as stream:
                stream.writelines(kept)
            self._stream = open(path, "a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        if self._stream is None:
            self._lines.append(line)
            files.write_text(self.path, "".join(self._lines))
            return
        self._stream.write(line)
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def read_jsonl_rows(path: str) -> list[dict]:
    if not files.exists(path):
        return []
    with files.open_file(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


class ProgressBar:
    """One console line redrawn in place on a terminal; on a pipe or file, one line per update."""

    def __init__(self, total: int, *, stream=None, width: int = 24):
        self.total = max(int(total), 1)
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def render(self, step: int, fields: Mapping[str, str]) -> str:
        filled = int(self.width * min(step, self.total) / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        return f"[{bar}] {step}/{self.total} {text}"

    def update(self, step: int, fields: Mapping[str, str]) -> None:
        line = self.render(step, fields)
        if self.interactive:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLogger:
    """See the module docstring. `enabled=False` (processes other than 0) makes every call a no-op."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress_bar: bool = True,
        stream=None,
    ):
        self.workdir = workdir
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.enabled = enabled
        self._writer = None
        self._bar = None
        self._timer_step = self.start_step
        self._timer_start = None
        self._items_since_timer = 0.0
        if not enabled:
            return
        files.makedirs(workdir)
        self._jsonl = StepJsonl(os.path.join(workdir, METRICS_FILE), self.start_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=self.start_step + 1)
        if progress_bar:
            self._bar = ProgressBar(total_steps, stream=stream)

    def write(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        """Appends one row to metrics.jsonl and the scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        row.update({name: _plain(value) for name, value in scalars.items()})
        self._jsonl.write(row)
        if self._writer is not None:
            for name, value in row.items():
                if name in ("step", "split", "time") or not isinstance(value, (int, float)):
                    continue
                self._writer.add_scalar(f"{split}/{name}", value, int(step))

    def start_timer(self, step: int) -> None:
        """Throughput and ETA are measured from here (call it after the first, compiling step)."""
        self._timer_step = int(step)
        self._timer_start = time.perf_counter()
        self._items_since_timer = 0.0

    def count(self, items: float) -> None:
        """Adds processed items (tokens) since the timer started, for the throughput figure."""
        self._items_since_timer += float(items)

    def rates(self, step: int) -> dict[str, float]:
        """{"items_per_second", "seconds_per_step", "eta_seconds"} since start_timer (empty before)."""
        if self._timer_start is None or step <= self._timer_step:
            return {}
        elapsed = time.perf_counter() - self._timer_start
        per_step = elapsed / (step - self._timer_step)
        return {
            "items_per_second": self._items_since_timer / max(elapsed, 1e-9),
            "seconds_per_step": per_step,
            "eta_seconds": per_step * max(self.total_steps - step, 0),
        }

    def progress(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Redraws the progress bar with loss, tokens/s and ETA."""
        if not self.enabled or self._bar is None:
            return
        fields = {}
        if "loss" in scalars:
            fields["loss"] = f"{float(scalars['loss']):.4f}"
        rates = self.rates(step)
        if rates:
            fields["tok/s"] = format_rate(rates["items_per_second"])
            fields["ETA"] = format_duration(rates["eta_seconds"])
        self._bar.update(step, fields)

    def close(self, *, plot: bool = True) -> str | None:
        """Flushes everything; writes the loss-curve PNG (returns its path, or None when nothing to plot)."""
        if not self.enabled:
            return None
        if self._bar is not None:
            self._bar.finish()
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        return plot_loss_curve(self.workdir) if plot else None


def plot_loss_curve(workdir: str, output: str | None = None) -> str | None:
    """Plots train and eval `loss` from WORKDIR/metrics.jsonl into a PNG; None when there is no loss."""
    rows = [row for row in read_metrics(workdir) if isinstance(row.get("loss"), (int, float))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for split in sorted({row["split"] for row in rows}):
        points = sorted((row["step"], row["loss"]) for row in rows if row["split"] == split)
        steps, values = np.array(points).T
        axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=split)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats per target token)")
    axis.set_yscale("log")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title(os.path.basename(files.resolve(workdir).rstrip("/")))
    figure.tight_layout()
    output = output or os.path.join(workdir, LOSS_CURVE_FILE)
    with files.open_file(output, "wb") as stream:
        figure.savefig(stream, format="png")
    plt.close(figure)
    return output
