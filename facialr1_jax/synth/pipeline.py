"""The iterative Facial-R1 loop: rounds of SFT -> GRPO -> evaluation -> synthesis (docs/METHOD.md 8.5).

    python launch/train.py --config=configs/pipeline.py --workdir=W

`run_pipeline(config, workdir)` runs `pipeline.rounds` rounds into W:

    W/round-1/sft     stage 1 on the seed set (skipped with pipeline.initial_checkpoint)
    W/round-1/grpo    stage 2 from round-1/sft                (skipped likewise)
    W/round-1/eval    the round's model on the held-out test split (eval harness: metrics.json, report.md)
    W/round-1/synth   stage 3 with the round's model on the stage 2 records
    W/round-2/train.jsonl   seed set + every record accepted so far (the SFT set of round 2)
    W/round-2/sft     stage 1 on train.jsonl, starting from round 1's model
    W/round-2/grpo, eval, synth   as in round 1
    W/rounds.json, rounds.md, rounds.png   one row per round: data, test metrics, synthesis yield

The last round synthesises too (its records are the loop's output) unless pipeline.final_synthesis
is False. The round's model is its GRPO run (or pipeline.initial_checkpoint for round 1). Synthesis in round r
skips the records accepted in earlier rounds (their ids are in the round's SFT set, passed as
`synth.known_jsonl`), so each round adds new records and the SFT set only grows.

Resuming: each finished step of a round is recorded in W/round-r/steps.json and a finished round in
W/round-r/round.json; a restarted pipeline skips both. A step that was interrupted resumes by itself
(SFT and GRPO from their checkpoints, synthesis from its shards).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from facialr1_jax.config_validation import ConfigError
from facialr1_jax.fea.records import FEARecord, read_jsonl, write_jsonl
from facialr1_jax.synth.shards import read_accepted, write_json_atomic

_log = logging.getLogger(__name__)

ROUNDS_JSON = "rounds.json"
ROUNDS_MARKDOWN = "rounds.md"
ROUNDS_PLOT = "rounds.png"
STEPS_FILE = "steps.json"
ROUND_FILE = "round.json"
TRAIN_FILE = "train.jsonl"
TABLE_METRICS = ("format_valid", "emotion_accuracy", "au_f1_macro", "au_f1_micro", "rouge_l")


# --------------------------------------------------------------------------------- the stages
@dataclasses.dataclass(frozen=True)
class Stages:
    """The stage functions a round calls (tests substitute fakes)."""

    sft: Callable[[Any, str], dict]
    grpo: Callable[[Any, str], dict]
    synth: Callable[[Any, str], dict]
    evaluate: Callable[[Any, str, str], dict]  # (config, checkpoint, workdir) -> headline metrics

    @classmethod
    def default(cls) -> "Stages":
        from facialr1_jax.synth.run import run_synthesis
        from facialr1_jax.train.grpo_loop import run_grpo
        from facialr1_jax.train.sft import run_sft

        return cls(sft=run_sft, grpo=run_grpo, synth=run_synthesis, evaluate=evaluate_checkpoint)


def benchmark_specs(config: Any) -> list:
    """The benchmarks of `config.benchmarks` that have a jsonl (each round evaluates them too); [] when
    the config has none or none is filled in. A bad entry is an EvalConfigError naming its key."""
    from facialr1_jax.eval import plan as plan_lib

    if "benchmarks" not in config or not config.benchmarks:
        return []
    return plan_lib.plan_benchmarks(config, require_one=False)


def evaluate_checkpoint(config: Any, checkpoint: str, workdir: str) -> dict:
    """Greedy evaluation of `checkpoint` on the config's test split, and on every benchmark of
    `config.benchmarks` with a jsonl (the paper variants), with the eval harness; writes metrics.json,
    report.md and predictions-<benchmark>.jsonl into `workdir`; returns the test split's headline
    numbers, with each benchmark's under "benchmarks"."""
    import jax

    from facialr1_jax.data import datasets
    from facialr1_jax.eval.report import write_report
    from facialr1_jax.eval.runner import _read_benchmark, encoding_for, evaluate_records
    from facialr1_jax.train.checkpoint import load_model
    from facialr1_jax.train.evaluation import scoring_profile
    from facialr1_jax.train.sft import mesh_from_config

    os.makedirs(workdir, exist_ok=True)
    split = datasets.load_split(config, "test", workdir=workdir)
    count = int(config.pipeline.eval_num_examples)
    records = list(split.records[:count] if count > 0 else split.records)
    model, tokenizer, info = load_model(checkpoint, mesh=mesh_from_config(config), dtype=config.model.dtype,
                                        param_dtype=config.model.param_dtype)
    is_main = jax.process_index() == 0
    encoding = encoding_for(info, config.data)
    settings = dict(encoding=encoding, batch_size=int(config.eval.batch_size),
                    max_new_tokens=int(config.eval.max_new_tokens), normalize=bool(config.eval.normalize_emotions),
                    rouge=bool(config.eval.rouge))
    result = evaluate_records(
        model, tokenizer, records, split.image_root, scoring_profile(records), benchmark="test",
        predictions_path=os.path.join(workdir, "predictions-test.jsonl") if is_main else None, **settings)
    results = {"test": result.metrics}
    for spec in benchmark_specs(config):
        benchmark_records, image_root, _ = _read_benchmark(spec, config, workdir)
        results[spec.name] = evaluate_records(
            model, tokenizer, benchmark_records, image_root, spec.profile, benchmark=spec.name,
            predictions_path=os.path.join(workdir, f"predictions-{spec.name}.jsonl") if is_main else None,
            **settings).metrics
    if is_main:
        write_report(workdir, results, plots=bool(config.eval.plots),
                     run_info={"checkpoint": info["path"], "step": info["step"], "decoding": "greedy",
                               "max_new_tokens": int(config.eval.max_new_tokens),
                               "emotion_comparison": "normalized" if config.eval.normalize_emotions else "exact"})
    headline = result.headline()
    if len(results) > 1:
        headline["benchmarks"] = {name: m.to_json() for name, m in results.items() if name != "test"}
    return headline


# --------------------------------------------------------------------------------- data files
@dataclasses.dataclass(frozen=True)
class DataFiles:
    """Where the seed set, the test split and their images are (the SFT runs read them as JSONL)."""

    seed: str
    test: str
    image_root: str


def data_files(config: Any) -> DataFiles:
    data = config.data
    if data.source == "builtin":
        from facialr1_jax.data import demo

        paths = demo.ensure_demo(data.builtin_dir, num_sft=int(data.builtin_num_sft), num_rl=int(data.builtin_num_rl),
                                 num_test=int(data.builtin_num_test), image_size=int(data.builtin_image_size),
                                 seed=int(config.seed))
        return DataFiles(seed=str(paths["sft"]), test=str(paths["test"]), image_root=str(paths["images"]))
    if data.source == "jsonl":
        seed_data = config.warm_start.data
        if not seed_data.train_jsonl or not data.eval_jsonl:
            raise ConfigError("with data.source = 'jsonl' the pipeline needs warm_start.data.train_jsonl (the seed "
                              "set) and data.eval_jsonl (the test split)")
        if os.path.abspath(seed_data.image_root or data.image_root) != os.path.abspath(data.image_root):
            raise ConfigError("the seed set and the stage 2 records must share one image root (warm_start.data."
                              "image_root and data.image_root differ): the merged SFT set has one")
        return DataFiles(seed=seed_data.train_jsonl, test=data.eval_jsonl, image_root=data.image_root)
    raise ConfigError(f"the pipeline reads its data as JSONL files: data.source must be builtin or jsonl, "
                      f"not {data.source!r}")


def write_training_set(seed_path: str, accepted: list[FEARecord], path: str) -> dict[str, int]:
    """seed + accepted records into `path` (atomically); an accepted id already in the seed is left out."""
    seed = list(read_jsonl(seed_path).records)
    seen = {record.id for record in seed}
    added = []
    for record in accepted:
        if record.id not in seen:
            seen.add(record.id)
            added.append(record)
    write_jsonl(seed + added, path)
    return {"seed": len(seed), "accepted": len(added), "left_out": len(accepted) - len(added)}


def accepted_before(workdir: str, round_number: int) -> list[FEARecord]:
    """Every record accepted by the synthesis of rounds 1 .. round_number - 1, in round order."""
    return [record for earlier in range(1, round_number)
            for record in read_accepted(os.path.join(workdir, f"round-{earlier}", "synth"))]


# ------------------------------------------------------------------------------- stage configs
def _copy(config: Any) -> Any:
    copied = copy.deepcopy(config)
    copied.unlock()
    return copied


def sft_config(config: Any, round_number: int, *, previous_model: str | None, files: DataFiles,
               train_file: str | None) -> Any:
    """The SFT config of a round: round 1 = warm_start as is (model and data sections of the
    pipeline); later rounds train `previous_model` on `train_file` for pipeline.sft_epochs_per_round
    whole epochs when it is > 0 (a retrain on the enlarged set, as the paper does), else for
    sft_steps_per_round steps (a fine-tune)."""
    c = _copy(config.warm_start)
    c.model = copy.deepcopy(config.model)
    if config.data.source == "builtin":
        c.data = copy.deepcopy(config.data)
    c.seed = config.seed
    if round_number == 1:
        return c
    c.model.checkpoint = previous_model
    c.data.source = "jsonl"
    c.data.train_jsonl = train_file
    c.data.eval_jsonl = files.test
    c.data.image_root = files.image_root
    epochs = float(config.pipeline.get("sft_epochs_per_round", 0.0))
    if epochs > 0:
        c.sft.num_epochs = epochs  # retrain for whole passes over the enlarged set
        c.sft.num_steps = 0
    else:
        c.sft.num_steps = int(config.pipeline.sft_steps_per_round)
        c.sft.num_epochs = 0.0
    if float(config.pipeline.sft_lr) > 0:
        c.optimizer.lr = float(config.pipeline.sft_lr)
    if float(config.pipeline.sft_synthesis_prompt_share) >= 0:
        c.sft.synthesis_prompt_share = float(config.pipeline.sft_synthesis_prompt_share)
    return c


def grpo_config(config: Any, round_number: int, sft_dir: str) -> Any:
    c = _copy(config)
    c.stage = "grpo"
    c.grpo.init_from = sft_dir
    c.model.checkpoint = ""
    steps = int(config.pipeline.grpo_steps_per_round)
    if round_number > 1 and steps >= 0:
        c.grpo.num_steps = steps
        c.grpo.num_epochs = 0.0
    return c  # steps < 0: every round runs the grpo section as configured (grpo.num_steps / num_epochs)


def synth_config(config: Any, round_number: int, model: str, known: str) -> Any:
    c = _copy(config)
    c.stage = "synth"
    c.synth.checkpoint = model
    c.synth.round = round_number
    c.synth.known_jsonl = ",".join(part for part in (config.synth.known_jsonl, known) if part)
    return c


# ------------------------------------------------------------------------------------ a round
class StageStopped(RuntimeError):
    """A stage returned before finishing (e.g. SIGTERM: it saved a checkpoint); rerun to resume."""

    def __init__(self, step: str, status: str):
        self.step = step
        self.status = status
        super().__init__(f"pipeline step {step} stopped early ({status}); run the pipeline again to resume it")


class RoundSteps:
    """The finished steps of one round (W/round-r/steps.json), each with its result summary."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, STEPS_FILE)
        self.done: dict[str, Any] = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as stream:
                self.done = json.load(stream)

    def run(self, name: str, function: Callable[[], dict], keep: Callable[[dict], Any] = lambda r: r) -> Any:
        if name in self.done:
            _log.info("pipeline: %s already done (%s)", name, self.path)
            return self.done[name]
        result = function()
        status = result.get("status", "completed") if isinstance(result, dict) else "completed"
        if status != "completed":
            raise StageStopped(name, status)
        self.done[name] = keep(result)
        write_json_atomic(self.path, self.done)
        return self.done[name]


def _training_summary(result: dict) -> dict:
    return {key: result.get(key) for key in ("status", "step", "train_records", "eval", "checkpoint", "wall_seconds")
            if key in result}


def _synthesis_summary(stats: dict) -> dict:
    return {key: stats.get(key) for key in ("annotated", "accepted", "rejected", "skipped", "yield", "by_attempt",
                                            "by_emotion", "seconds", "workdir")}


def run_round(config: Any, workdir: str, round_number: int, stages: Stages, files: DataFiles,
              previous_model: str | None) -> dict:
    """Runs (or resumes) one round; returns its summary row."""
    folder = os.path.join(workdir, f"round-{round_number}")
    os.makedirs(folder, exist_ok=True)
    steps = RoundSteps(folder)
    row: dict[str, Any] = {"round": round_number}
    initial = config.pipeline.initial_checkpoint
    if round_number == 1 and initial:
        model = initial
        train_file = files.seed
        row["sft_records"] = None
    else:
        if round_number == 1:
            train_file = files.seed
        else:
            train_file = os.path.join(folder, TRAIN_FILE)
            row["training_set"] = steps.run("training_set", lambda: write_training_set(
                files.seed, accepted_before(workdir, round_number), train_file))
        sft_dir, grpo_dir = os.path.join(folder, "sft"), os.path.join(folder, "grpo")
        row["sft"] = steps.run("sft", lambda: stages.sft(
            sft_config(config, round_number, previous_model=previous_model, files=files, train_file=train_file),
            sft_dir), _training_summary)
        row["grpo"] = steps.run("grpo", lambda: stages.grpo(grpo_config(config, round_number, sft_dir), grpo_dir),
                                _training_summary)
        model = grpo_dir
        row["sft_records"] = row["sft"].get("train_records")
    row["model"] = model
    row["eval"] = steps.run("eval", lambda: stages.evaluate(config, model, os.path.join(folder, "eval")))
    last = round_number == int(config.pipeline.rounds)
    if last and not bool(config.pipeline.final_synthesis):
        row["synthesis"] = None
    else:
        row["synthesis"] = steps.run("synth", lambda: stages.synth(
            synth_config(config, round_number, model, train_file), os.path.join(folder, "synth")),
            _synthesis_summary)
    write_json_atomic(os.path.join(folder, ROUND_FILE), row)
    return row


# --------------------------------------------------------------------------------- the report
def _number(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rounds_table(rows: list[dict]) -> str:
    """Markdown: one row per round with its data, the test metrics of its model and its yield."""
    header = ["round", "SFT records", *TABLE_METRICS, "accuracy change", "synthesis accepted", "yield"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    previous = None
    for row in rows:
        metrics = row.get("eval") or {}
        accuracy = metrics.get("emotion_accuracy")
        change = "-" if previous is None or accuracy is None else f"{accuracy - previous:+.1f}"
        synthesis = row.get("synthesis") or {}
        yield_value = synthesis.get("yield")
        lines.append("| " + " | ".join([
            str(row["round"]), str(row.get("sft_records") or "-"),
            *(_number(metrics.get(name)) for name in TABLE_METRICS), change,
            f"{synthesis.get('accepted', '-')} of {synthesis.get('annotated', '-')}",
            "-" if yield_value is None else f"{100 * yield_value:.1f}%"]) + " |")
        previous = accuracy if accuracy is not None else previous
    return "\n".join(lines)


def plot_rounds(rows: list[dict], output: str) -> str:
    """The test metrics of each round's model, with the records accepted per round as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    figure, axis = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    bars = axis.twinx()
    bars.bar(rounds, [(row.get("synthesis") or {}).get("accepted") or 0 for row in rows], color="tab:gray",
             alpha=0.25, width=0.5)
    bars.set_ylabel("records accepted by the round's synthesis")
    for name in TABLE_METRICS:
        values = [(row.get("eval") or {}).get(name) for row in rows]
        if any(value is not None for value in values):
            axis.plot(rounds, [float("nan") if v is None else v for v in values], marker="o", label=name)
    axis.set_zorder(bars.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.set_xlabel("round")
    axis.set_xticks(rounds)
    axis.set_ylabel("test split (%)")
    axis.set_ylim(0, 100)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    axis.set_title("Facial-R1 rounds: SFT -> GRPO -> synthesis")
    figure.tight_layout()
    figure.savefig(output)
    plt.close(figure)
    return output


def write_rounds_report(workdir: str, rows: list[dict], *, plot: bool = True) -> dict[str, str]:
    paths = {"json": os.path.join(workdir, ROUNDS_JSON), "markdown": os.path.join(workdir, ROUNDS_MARKDOWN)}
    write_json_atomic(paths["json"], {"rounds": rows})
    with open(paths["markdown"], "w", encoding="utf-8") as stream:
        stream.write("# Facial-R1 rounds (SFT -> GRPO -> evaluation -> synthesis)\n\n"
                     "Test metrics (percent, greedy decoding) of each round's GRPO model; the synthesis columns are "
                     "that model's stage 3 yield, which feeds the next round's SFT set.\n\n")
        stream.write(rounds_table(rows) + "\n")
    if plot:
        paths["plot"] = plot_rounds(rows, os.path.join(workdir, ROUNDS_PLOT))
    return paths


# ---------------------------------------------------------------------------------- the entry
_PIPELINE_RULES = {
    "rounds": (lambda v: v >= 1, ">= 1"),
    "sft_steps_per_round": (lambda v: v >= 1, ">= 1"),
    "grpo_steps_per_round": (lambda v: v >= -1, ">= 0, or -1 (every round runs the grpo section as configured)"),
    "sft_epochs_per_round": (lambda v: v >= 0, ">= 0 (0 = sft_steps_per_round steps)"),
    "sft_lr": (lambda v: v >= 0, ">= 0 (0 = warm_start's learning rate)"),
    "sft_synthesis_prompt_share": (lambda v: v < 0 or v <= 1, "in [0, 1] (< 0 = warm_start's share)"),
    "eval_num_examples": (lambda v: v >= 0, ">= 0 (0 = the whole test split)"),
}


def check_config(config: Any) -> None:
    """Raises ConfigError for a pipeline knob or a synth setting that would only fail rounds later."""
    from facialr1_jax.synth.settings import SynthSettings

    for name, (rule, wording) in _PIPELINE_RULES.items():
        if name not in config.pipeline:
            continue
        value = config.pipeline[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not rule(value):
            raise ConfigError(f"config.pipeline.{name} = {value!r} must be {wording}")
    SynthSettings.from_config(config)
    benchmark_specs(config)  # a paper benchmark filled in wrongly fails now, not after round 1's training
    if config.data.source not in ("builtin", "jsonl"):
        raise ConfigError(f"the pipeline reads its data as JSONL files: data.source must be builtin or jsonl, "
                          f"not {config.data.source!r}")
    if config.pipeline.initial_checkpoint:
        from facialr1_jax.train.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(config.pipeline.initial_checkpoint)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"config.pipeline.initial_checkpoint: {error}") from None


def run_pipeline(config: Any, workdir: str, *, stages: Stages | None = None) -> dict:
    """Runs (or resumes) every round into `workdir`; returns {"status", "rounds": rows, "files": report paths}.

    A stage that stops early (SIGTERM: it checkpoints and returns) ends the pipeline with that
    status ("preempted") and the round and step it stopped in; running it again resumes there.
    """
    import jax

    check_config(config)
    stages = stages or Stages.default()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    files = data_files(config)
    rows: list[dict] = []
    report: dict[str, str] = {}
    previous_model: str | None = None
    for round_number in range(1, int(config.pipeline.rounds) + 1):
        finished = os.path.join(workdir, f"round-{round_number}", ROUND_FILE)
        if os.path.exists(finished):
            with open(finished, encoding="utf-8") as stream:
                row = json.load(stream)
            _log.info("pipeline: round %d already finished", round_number)
        else:
            print(f"pipeline: round {round_number} of {config.pipeline.rounds}", flush=True)
            try:
                row = run_round(config, workdir, round_number, stages, files, previous_model)
            except StageStopped as stopped:
                print(f"pipeline: {stopped}", flush=True)
                return {"status": stopped.status, "round": round_number, "step": stopped.step, "rounds": rows,
                        "files": report}
        rows.append(row)
        previous_model = row["model"]
        if jax.process_index() == 0:
            report = write_rounds_report(workdir, rows)
    if jax.process_index() == 0:
        print(rounds_table(rows), flush=True)
    return {"status": "completed", "rounds": rows, "files": report}
