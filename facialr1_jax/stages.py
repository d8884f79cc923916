"""Which library function runs each stage named by `config.stage`.

The launcher stays thin: it parses flags and calls `run_stage`. Stages are imported lazily so that
a config error is reported before JAX or a model is ever loaded.
"""

from __future__ import annotations

import dataclasses
import importlib

import ml_collections


@dataclasses.dataclass(frozen=True)
class StageEntry:
    module: str  # Module that implements the stage.
    function: str  # Its entry point: function(config, workdir) -> dict of final metrics.
    issue: int  # The tracker issue that delivers the stage (named when it is not available yet).
    summary: str


STAGES: dict[str, StageEntry] = {
    "pretrain": StageEntry("facialr1_jax.train.pretrain", "run_pretrain", 21, "Stage 0 perception pretraining"),
    "sft": StageEntry("facialr1_jax.train.sft", "run_sft", 6, "Stage 1 supervised fine-tuning"),
    "grpo": StageEntry("facialr1_jax.train.grpo_loop", "run_grpo", 7, "Stage 2 GRPO"),
    "synth": StageEntry("facialr1_jax.synth.run", "run_synthesis", 8, "Stage 3 data synthesis"),
    "pipeline": StageEntry("facialr1_jax.synth.pipeline", "run_pipeline", 8, "SFT -> GRPO -> synthesis rounds"),
    "eval": StageEntry("facialr1_jax.eval.runner", "run_eval", 9, "benchmark evaluation"),
}


class StageUnavailableError(RuntimeError):
    """The stage exists in the design but its implementation has not landed in this checkout."""


def resolve_stage(name: str):
    """Returns the entry function of stage `name`, or raises StageUnavailableError saying why."""
    if name not in STAGES:
        raise StageUnavailableError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    entry = STAGES[name]
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as error:
        if error.name != entry.module:
            raise  # A real missing dependency inside the stage: show the true error.
        raise StageUnavailableError(
            f"stage {name!r} ({entry.summary}) is not available in this version yet: it lands with issue #{entry.issue}"
        ) from None
    return getattr(module, entry.function)


def run_stage(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return resolve_stage(config.stage)(config, workdir)
