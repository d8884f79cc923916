"""What an evaluation run will read, checked before JAX or a model is loaded (no JAX here).

`plan_benchmarks(config)` turns `config.benchmarks` into a list of `BenchmarkSpec`s and rejects a
bad entry (unknown profile, missing file, negative limit) with one sentence naming the config key,
so `launch/eval.py` fails in a second instead of after loading a 7B model. The built-in demo split
(a benchmark with profile "synthface" and no jsonl) is resolved later, by the runner, because
generating it needs the data package.
"""

from __future__ import annotations

import dataclasses
import os

from facialr1_jax.fea.profiles import UnknownDatasetError, get_profile

# The profile of the built-in synthetic faces: a benchmark with this profile and no jsonl is the
# built-in test split.
BUILTIN_PROFILE = "synthface"


class EvalConfigError(ValueError):
    """An evaluation setting that cannot work; the message names the config key."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark to evaluate. `jsonl` is None for the built-in split (generated on demand)."""

    name: str
    profile: str
    jsonl: str | None
    image_root: str | None
    max_examples: int

    @property
    def builtin(self) -> bool:
        return self.jsonl is None


def plan_benchmarks(config, *, require_one: bool = True) -> list[BenchmarkSpec]:
    """The benchmarks of `config.benchmarks` that will run, in config order; EvalConfigError if none
    (unless `require_one` is False: the pipeline evaluates its test split anyway)."""
    if "benchmarks" not in config or not config.benchmarks:
        raise EvalConfigError("config.benchmarks is empty: name at least one benchmark")
    specs = []
    for name in config.benchmarks:
        entry = config.benchmarks[name]
        key = f"config.benchmarks.{name}"
        try:
            profile = get_profile(entry.profile)
        except UnknownDatasetError as error:
            raise EvalConfigError(f"{key}.profile: {error}") from None
        if entry.max_examples < 0:
            raise EvalConfigError(f"{key}.max_examples = {entry.max_examples} must be >= 0 (0 = all)")
        if not entry.jsonl:
            if profile.name == BUILTIN_PROFILE:
                specs.append(BenchmarkSpec(name, profile.name, None, None, entry.max_examples))
            continue  # A paper benchmark the user did not fill in: skipped.
        if not os.path.isfile(entry.jsonl):
            raise EvalConfigError(f"{key}.jsonl = {entry.jsonl!r} is not a file")
        if not entry.image_root:
            raise EvalConfigError(f"{key}.image_root is empty: set the folder the JSONL's image paths are relative to")
        if not os.path.isdir(entry.image_root):
            raise EvalConfigError(f"{key}.image_root = {entry.image_root!r} is not a folder")
        specs.append(BenchmarkSpec(name, profile.name, entry.jsonl, entry.image_root, entry.max_examples))
    if not specs and require_one:
        names = ", ".join(config.benchmarks)
        raise EvalConfigError(
            f"no benchmark has a jsonl file (benchmarks: {names}); set e.g. "
            f"--config.benchmarks.{next(iter(config.benchmarks))}.jsonl=FILE and .image_root=DIR"
        )
    return specs


def checkpoint_path(config) -> str:
    """The checkpoint to evaluate: config.eval.checkpoint, else config.model.checkpoint."""
    path = config.eval.checkpoint or config.model.checkpoint
    if not path:
        raise EvalConfigError(
            "no model to evaluate: set --checkpoint or --config.eval.checkpoint (a training workdir, a step "
            "folder or a Hugging Face folder)"
        )
    if not os.path.exists(path):
        key = "config.eval.checkpoint" if config.eval.checkpoint else "config.model.checkpoint"
        raise EvalConfigError(f"{key} = {path!r} does not exist")
    return path


def check_eval_config(config) -> tuple[str, list[BenchmarkSpec]]:
    """(checkpoint path, benchmarks) of a valid eval config; EvalConfigError otherwise."""
    return checkpoint_path(config), plan_benchmarks(config)
