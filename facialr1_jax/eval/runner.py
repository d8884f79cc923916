"""The evaluation stage: greedy generation over benchmark files, scored and reported.

    python launch/eval.py --checkpoint=workdirs/grpo            # or launch/train.py --config=configs/eval.py
    result = evaluate_records(model, tokenizer, records, image_root, "RAF-DB", encoding=...)

`run_eval(config, workdir)` (stage "eval"):
  1. checks the config (`plan.check_eval_config`): checkpoint path, benchmark files and folders;
  2. loads the model (`train.checkpoint.load_model`: a workdir's latest checkpoint, a step folder
     or a Hugging Face folder) onto the configured mesh;
  3. per benchmark: reads and validates its FEA JSONL (`data.sources.FEAJsonlSource`: bad rows
     follow `data.on_error`), or generates the built-in test split (`data.demo.ensure_demo`);
     greedy generation in batches of `eval.batch_size` (`evaluate_records`); progress in the log;
  4. writes WORKDIR/metrics.json, report.md, confusion-<benchmark>.png and
     predictions-<benchmark>.jsonl, and prints the paper-layout tables.

Prompts are encoded as the checkpoint was trained (`encoding_for`): a checkpoint written by this
project records its run config, whose `data` section (prompt variant, image pixel bounds, prompt
length) is reused unless `eval.use_checkpoint_encoding` is False. A Hugging Face folder carries no
such record: the eval config's `data` section applies.

`evaluate_records` is the one implementation of "generate, then score" shared with the training
stages' before/after tables: generation is `train.evaluation.GreedyEvaluator.generate_texts` (the
rollout engine, greedy), scoring is `eval.metrics.score_benchmark` (the oracle's parsing).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from facialr1_jax.eval import plan as plan_lib
from facialr1_jax.eval import report as report_lib
from facialr1_jax.eval.metrics import BenchmarkMetrics, ExampleScore, score_benchmark
from facialr1_jax.fea.profiles import DatasetProfile, get_profile
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.models import bound_frame_patches

_log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions-{benchmark}.jsonl"


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate_records` measured: the metrics, each output and how it was scored."""

    metrics: BenchmarkMetrics
    texts: list[str]
    scores: list[ExampleScore]
    seconds: float

    def headline(self) -> dict[str, float]:
        """The headline numbers that apply (percent), for training logs and before/after tables."""
        row = {"num_examples": float(self.metrics.num_examples)}
        for name in ("format_valid", "emotion_accuracy", "au_f1_micro", "au_f1_macro", "rouge_l"):
            value = getattr(self.metrics, name)
            if value is not None:
                row[name] = float(value)
        return row


def write_predictions(path: str | os.PathLike, texts: Sequence[str], scores: Sequence[ExampleScore]) -> None:
    """One JSON line per example: id, the generated text and how it was read and scored."""
    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        for text, score in zip(texts, scores, strict=True):
            stream.write(json.dumps({"id": score.id, "prediction": text, **score.to_json()},
                                    ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def greedy_generator(tokenizer, encoding, model, *, max_new_tokens: int, batch_size: int):
    """The training stages' greedy generator (`train.evaluation.GreedyEvaluator`) for `model`;
    RuntimeError when the rollout engine is not installed."""
    from facialr1_jax.train.evaluation import GreedyEvaluator

    generator = GreedyEvaluator.create(tokenizer, encoding, model.config, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
    if generator is None:
        raise RuntimeError(
            "greedy generation needs the rollout engine (facialr1_jax.sampling.generate), which this "
            "installation does not provide"
        )
    return generator


def evaluate_records(
    model,
    tokenizer,
    records: Sequence[FEARecord],
    image_root: str | os.PathLike | None,
    profile: DatasetProfile | str,
    *,
    encoding=None,
    images: Sequence[Sequence[Any]] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 256,
    normalize: bool = True,
    rouge: bool = True,
    benchmark: str | None = None,
    predictions_path: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Greedy answers for `records`, scored on the benchmark described by `profile`.

    records: validated FEA records; their images are read from `image_root` (never outside it),
        or taken from `images[i]` (the record's images as paths, bytes, PIL images or arrays).
    profile: a `DatasetProfile` or its name ("RAF-DB", "DISFA", "synthface", ...).
    encoding: `data.examples.EncodingConfig` (prompt variant, image pixels, prompt length);
        None = its defaults.
    batch_size: prompts per generation call; the last batch is padded to the same shape, so the
        engine compiles once per prompt-length bucket.
    normalize / rouge: see `metrics.score_benchmark`.
    predictions_path: where to write one JSON line per example (None = nowhere).
    progress: called with (done, total) after each batch.
    """
    from facialr1_jax.data.examples import EncodingConfig, encode_prompt_example

    if isinstance(profile, str):
        profile = get_profile(profile)
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    if images is not None and len(images) != len(records):
        raise ValueError(f"{len(images)} image lists for {len(records)} records")
    encoding = encoding or EncodingConfig()
    image_root = None if image_root is None else os.fspath(image_root)
    generator = greedy_generator(tokenizer, encoding, model, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
    start = time.perf_counter()
    texts: list[str] = []
    for first in range(0, len(records), batch_size):
        indices = range(first, min(first + batch_size, len(records)))
        # Encoding per batch keeps only one batch of image patches in memory.
        prompts = [
            encode_prompt_example(records[i], tokenizer, encoding, image_root=image_root,
                                  images=None if images is None else images[i])
            for i in indices
        ]
        texts.extend(generator.generate_texts(model, prompts))
        if progress is not None:
            progress(len(texts), len(records))
    metrics, scores = score_benchmark(texts, records, profile, benchmark=benchmark, normalize=normalize,
                                      rouge=rouge)
    if predictions_path is not None:
        write_predictions(predictions_path, texts, scores)
    return EvaluationResult(metrics=metrics, texts=texts, scores=scores, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------ encoding
def encoding_for(info: dict, data_config=None, *, use_checkpoint: bool = True):
    """The prompt encoding to evaluate a loaded model with.

    The `data` section of the run that wrote the checkpoint (`info["meta"]["config"]`, recorded by
    the training stages) when there is one and `use_checkpoint` is set; else `data_config` (a
    config's `data` section); else the `EncodingConfig` defaults.
    """
    from facialr1_jax.data import images as image_lib
    from facialr1_jax.data.examples import EncodingConfig

    trained = ((info.get("meta") or {}).get("config") or {}).get("data") if use_checkpoint else None
    source = trained or data_config
    if source is None:
        return EncodingConfig()
    return EncodingConfig(
        prompt_variant=source["prompt_variant"],
        image=image_lib.ImageConfig(min_pixels=int(source["min_pixels"]), max_pixels=int(source["max_pixels"])),
        max_prompt_tokens=int(source["max_prompt_tokens"]),
    )


# ----------------------------------------------------------------------------------- the stage
def _builtin_test_split(config) -> tuple[str, str]:
    """(jsonl, image root) of the built-in test split, generated and cached on first use."""
    from facialr1_jax.data import demo

    data = config.data
    paths = demo.ensure_demo(
        data.builtin_dir,
        num_sft=int(data.builtin_num_sft),
        num_rl=int(data.builtin_num_rl),
        num_test=int(data.builtin_num_test),
        image_size=int(data.builtin_image_size),
        seed=int(config.seed),
    )
    return str(paths["test"]), str(paths["images"])


def _read_benchmark(spec: plan_lib.BenchmarkSpec, config, workdir: str):
    """(records, image root, read summary) of one benchmark; bad rows follow data.on_error.

    Every image is decoded once up front, so a truncated file is a counted bad row (under "skip")
    or an error naming its line (under "raise") before any generation starts.
    """
    from facialr1_jax.data import sources

    jsonl, image_root = (spec.jsonl, spec.image_root) if not spec.builtin else _builtin_test_split(config)
    source = sources.FEAJsonlSource(
        jsonl, image_root, on_error=config.data.on_error, decode="bytes", image_check="decode",
        report_path=os.path.join(workdir, f"data_report-{spec.name}.json"),
    )
    records = list(source.records)
    if spec.max_examples:
        records = records[: spec.max_examples]
    if not records:
        raise ValueError(f"benchmark {spec.name!r} ({jsonl}) has no usable records ({source.scan.summary()})")
    return records, image_root, source.scan.summary()


class _ProgressLog:
    """Logs generation progress about every 10% (and at the end) with throughput and ETA."""

    def __init__(self, name: str):
        self.name = name
        self.start = time.perf_counter()
        self.next_report = 0.1

    def __call__(self, done: int, total: int) -> None:
        if done < total and done / total < self.next_report:
            return
        self.next_report = done / total + 0.1
        seconds = time.perf_counter() - self.start
        rate = done / seconds if seconds > 0 else float("inf")
        eta = (total - done) / rate if rate > 0 else 0.0
        _log.info("%s: %d/%d examples (%.1f/s, ETA %.0fs)", self.name, done, total, rate, eta)


def _mesh(config):
    from facialr1_jax.parallel import make_mesh

    return make_mesh({"data": int(config.mesh.data), "fsdp": int(config.mesh.fsdp),
                      "tensor": int(config.mesh.tensor)})


def run_eval(config, workdir: str) -> dict:
    """Evaluates `config.eval.checkpoint` on every configured benchmark; returns {benchmark: headline}."""
    import jax

    from facialr1_jax.data import tokenizer as tokenizer_lib
    from facialr1_jax.train.checkpoint import load_model

    checkpoint, specs = plan_lib.check_eval_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    model, tokenizer, info = load_model(checkpoint, mesh=_mesh(config), dtype=config.model.dtype,
                                        param_dtype=config.model.param_dtype)
    if config.model.tokenizer:
        tokenizer = tokenizer_lib.load_tokenizer(config.model.tokenizer)
    encoding = encoding_for(info, config.data, use_checkpoint=bool(config.eval.use_checkpoint_encoding))
    bound_frame_patches(model, encoding.image.max_pixels)  # frames are resized to at most this
    _log.info("evaluating %s checkpoint %s (step %s); prompts: %s, %d..%d pixels", info["kind"], info["path"],
              info["step"], encoding.prompt_variant, encoding.image.min_pixels, encoding.image.max_pixels)

    results: dict[str, BenchmarkMetrics] = {}
    timings: dict[str, dict[str, Any]] = {}
    for spec in specs:
        records, image_root, summary = _read_benchmark(spec, config, workdir)
        _log.info("benchmark %s (profile %s): %s; evaluating %d records", spec.name, spec.profile, summary,
                  len(records))
        predictions = os.path.join(workdir, PREDICTIONS_FILE.format(benchmark=spec.name))
        outcome = evaluate_records(
            model, tokenizer, records, image_root, spec.profile,
            encoding=encoding,
            batch_size=int(config.eval.batch_size),
            max_new_tokens=int(config.eval.max_new_tokens),
            normalize=bool(config.eval.normalize_emotions),
            rouge=bool(config.eval.rouge),
            benchmark=spec.name,
            predictions_path=predictions if (config.eval.write_predictions and is_main) else None,
            progress=_ProgressLog(spec.name),
        )
        results[spec.name] = outcome.metrics
        timings[spec.name] = {"seconds": round(outcome.seconds, 3),
                              "examples_per_second": round(len(records) / max(outcome.seconds, 1e-9), 3)}

    run_info = {
        "checkpoint": info["path"],
        "checkpoint_kind": info["kind"],
        "step": info["step"],
        "prompt_variant": encoding.prompt_variant,
        "max_new_tokens": int(config.eval.max_new_tokens),
        "decoding": "greedy",
        "emotion_comparison": "normalized" if config.eval.normalize_emotions else "exact",
        "timing": timings,
    }
    if is_main:
        written = report_lib.write_report(workdir, results, run_info=run_info, plots=bool(config.eval.plots),
                                          model_name=_model_name(info))
        print(report_lib.console_report(results, model_name=_model_name(info)), flush=True)
        _log.info("report: %s; metrics: %s", written["report"], written["metrics"])
    return {name: m.to_json() for name, m in results.items()}


def _model_name(info: dict) -> str:
    if info.get("step") is not None:
        return f"this model (step {info['step']})"
    return "this model"
