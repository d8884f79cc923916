"""The step loop every stage runs: batches in, steps, logging, evaluation, checkpoints, preemption.

    outcome = run_loop(state, train_step, next_batch, total_steps=..., checkpointer=..., ...)

What it guarantees:
  * Resume is exact. Checkpoints hold the train state and the data iterator state captured right
    after the saved step (`data_state()` is called between steps, never while a batch is pending),
    so a resumed run sees the same batches in the same order as an uninterrupted one.
  * SIGTERM (preemption) never loses work: `PreemptionGuard` turns the signal into a flag, the loop
    finishes the step in flight, saves a checkpoint, waits for it to be written and returns with
    status "preempted". On several hosts the flag is agreed on collectively, so all stop together.
  * Metrics leave the device only at logging steps (values are kept as device arrays until then),
    so the host does not wait for every step to finish before dispatching the next.

`next_batch(state)` returns `(device_batch, info)`: info carries host-side facts about the batch
(`tokens` for throughput, anything else is passed to `on_batch`). GRPO's `next_batch` produces its
batch by rolling out the current policy, which is why it receives the state.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any, Callable

import jax
import numpy as np

from facialr1_jax.train.checkpoint import Checkpointer
from facialr1_jax.train.metrics import MetricsLogger
from facialr1_jax.train.state import TrainState

_log = logging.getLogger(__name__)


class PreemptionGuard:
    """Within `with PreemptionGuard():`, SIGTERM sets `requested` instead of killing the process.

    A second SIGTERM while the first is being handled restores the default behaviour (so an
    operator can still kill a stuck run). Handlers are only installed from the main thread (Python
    allows nothing else); elsewhere the guard only reports multi-host preemption.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        del frame
        if self._requested:
            signal.signal(signum, signal.SIG_DFL)
        _log.warning("received signal %d: finishing the current step, then saving a checkpoint", signum)
        self._requested = True

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def request(self) -> None:
        """Asks the loop to stop as if a signal had arrived (for callers and tests)."""
        self._requested = True

    @property
    def requested(self) -> bool:
        return self._requested

    def should_stop(self) -> bool:
        """The local flag, OR-ed over all processes when there are several (a collective call)."""
        if jax.process_count() == 1:
            return self._requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(int(self._requested), np.int32))
        return bool(np.any(flags))


@dataclasses.dataclass
class LoopOutcome:
    state: TrainState
    status: str  # "completed" | "preempted"
    step: int
    last_metrics: dict  # the last logged train row
    eval_metrics: dict  # the last evaluation's scalars (empty when none ran)


def _summarise(pending: list[tuple[dict, dict]]) -> dict:
    """Fetches the pending step metrics and reduces them over the logging interval.

    loss is averaged weighted by each step's denominator (the token-weighted mean over the
    interval); other scalars are plain means, `tokens` is summed.
    """
    fetched = jax.device_get([metrics for metrics, _ in pending])
    denominators = np.array([float(m.get("denominator", 1.0)) for m in fetched])
    row: dict[str, float] = {}
    for name in fetched[-1]:
        values = np.array([float(m[name]) for m in fetched])
        if name == "loss" and denominators.sum() > 0:
            row[name] = float(np.sum(values * denominators) / denominators.sum())
        elif name == "denominator":
            row[name] = float(values.sum())
        else:
            row[name] = float(values.mean())
    row["tokens"] = float(sum(info.get("tokens", 0) for _, info in pending))
    row["steps_in_row"] = len(pending)
    return row


def run_loop(
    state: TrainState,
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]],
    next_batch: Callable[[TrainState], tuple[Any, dict]],
    *,
    total_steps: int,
    checkpointer: Checkpointer | None,
    checkpoint_every: int,
    meta: dict,
    logger: MetricsLogger,
    log_every: int,
    data_state: Callable[[], Any] | None = None,
    evaluate: Callable[[TrainState, int], dict] | None = None,
    eval_every: int = 0,
    guard: PreemptionGuard | None = None,
    on_batch: Callable[[int, dict], None] | None = None,
    postprocess: Callable[[dict], dict] | None = None,
    evaluate_at_end: bool = True,
) -> LoopOutcome:
    """Runs steps from `state.step` to `total_steps` (see the module docstring).

    postprocess(row) may add derived scalars to each logged train row (e.g. token accuracy from
    summed extras). Evaluation runs every `eval_every` steps (0: never in between) and, with
    `evaluate_at_end`, once more when the run completes (callers with a costlier final
    evaluation pass False and run their own).
    """
    guard = guard or PreemptionGuard(signals=())
    step = int(jax.device_get(state.step))
    pending: list[tuple[dict, dict]] = []
    last_row: dict = {}
    eval_row: dict = {}
    last_saved = step if checkpointer is not None and step in checkpointer.all_steps() else -1

    def save() -> None:
        nonlocal last_saved
        if checkpointer is None or last_saved == step:
            return
        checkpointer.save(state, meta=meta, data_state=data_state() if data_state else None)
        last_saved = step

    def flush() -> None:
        nonlocal last_row, pending
        if not pending:
            return
        row = _summarise(pending)
        if postprocess is not None:
            row = postprocess(row)
        logger.write(step, row, split="train")
        logger.progress(step, row)
        last_row = row
        pending = []

    status = "completed"
    first_step_done = False
    while step < total_steps:
        if guard.should_stop():
            status = "preempted"
            break
        batch, info = next_batch(state)
        if on_batch is not None:
            on_batch(step, info)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((metrics, info))
        if not first_step_done:
            # The first step compiles: block on it so that throughput excludes compilation.
            jax.block_until_ready(metrics)
            logger.start_timer(step)
            first_step_done = True
        else:
            logger.count(info.get("tokens", 0))
        if step % log_every == 0 or step == total_steps:
            flush()
        if evaluate is not None and eval_every and step % eval_every == 0 and step < total_steps:
            flush()
            eval_row = evaluate(state, step)
            logger.write(step, eval_row, split="eval")
        if step % checkpoint_every == 0:
            save()
    flush()
    if status == "completed" and evaluate is not None and evaluate_at_end:
        eval_row = evaluate(state, step)
        logger.write(step, eval_row, split="eval")
    save()
    if checkpointer is not None:
        checkpointer.wait()
    if status == "preempted":
        _log.warning("stopped at step %d on a preemption request; checkpoint saved", step)
    return LoopOutcome(state=state, status=status, step=step, last_metrics=last_row, eval_metrics=eval_row)
