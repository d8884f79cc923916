"""Stage 1: supervised fine-tuning on reasoning-annotated FEA records (docs/METHOD.md section 5).

    python launch/train.py --config=configs/sft.py --workdir=W

`run_sft(config, workdir)`:
  1. data: the "sft" split (records with a description; `load_stage1_splits` for compact targets)
     and the "test" split for held-out loss and greedy evaluation (`data.datasets.load_split`),
     streamed by a grain pipeline;
  2. model: fresh from `model.preset`, or `model.checkpoint` (a Hugging Face folder or another
     run's workdir / step folder), placed on the mesh with the training sharding rules;
  3. resume: when WORKDIR/checkpoints holds a step, params, optimiser, step, RNG and data iterator
     state come from there and the run continues exactly where it stopped;
  4. the step loop (`train.loop.run_loop`): accumulated micro-batches, metrics, checkpoints every
     `checkpoint.every_steps`, held-out evaluation every `sft.eval_every_steps` and at the end,
     SIGTERM -> checkpoint and a clean return;
  5. final report: held-out loss, and once the rollout engine exists (`facialr1_jax.sampling`)
     greedy generation on the test split scored with the paper's metrics (format-valid rate,
     emotion accuracy, AU F1), written to WORKDIR/sft_result.json.

Targets (`data.target`, `data.examples`): the records' reasoning `description` (the paper's), or
"compact" replies built from the labels (`<think>AU6, AU12</think>\n<answer>happiness</answer>`).

Files in the workdir: checkpoints/, metrics.jsonl, batches.jsonl (record ids of every step's batch,
to audit data order across resumes), tensorboard/, loss_curve.png, data_report-*.json (bad rows),
predictions-test.jsonl (greedy outputs), sft_result.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from facialr1_jax import config_validation, models
from facialr1_jax.data import batching, datasets, pipeline
from facialr1_jax.data import images as image_lib
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig, encode_sft_example, has_target
from facialr1_jax.parallel import TRAINING_RULES, files, make_mesh, shard_model
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train import evaluation, forward, loop, optim
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.metrics import MetricsLogger, ProgressBar, StepJsonl

_log = logging.getLogger(__name__)

RESULT_FILE = "sft_result.json"
BATCH_LOG_FILE = "batches.jsonl"

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def sft_loss(model, micro_batch: dict, rng: jax.Array):
    """Next-token cross-entropy on the masked targets: (sum, token count, {})."""
    del rng  # the model has no dropout
    log_probs, mask = forward.selected_target_log_probs(model, micro_batch)
    mask = mask.astype(jnp.float32)
    return -jnp.sum(log_probs * mask), jnp.sum(mask), {}


def mesh_from_config(config: Any) -> jax.sharding.Mesh:
    return make_mesh({"data": int(config.mesh.data), "fsdp": int(config.mesh.fsdp),
                      "tensor": int(config.mesh.tensor)})


def build_model(config: Any, mesh: jax.sharding.Mesh) -> tuple[nnx.Module, Any, dict]:
    """(model on the mesh, tokenizer, model meta for checkpoints) from the `model` config section.

    `model.checkpoint` empty: a fresh `model.preset` initialised from `seed`; otherwise the
    checkpoint's weights (`checkpoint.load_model`). The tokenizer is `model.tokenizer`, else the
    checkpoint's own, else the bundled one.
    """
    m = config.model
    if m.checkpoint:
        model, tokenizer, info = checkpoint_lib.load_model(
            m.checkpoint, mesh=mesh, dtype=m.dtype, param_dtype=m.param_dtype, remat=bool(m.remat))
        tokenizer_path = m.tokenizer or info["tokenizer"]
        if m.tokenizer:
            tokenizer = tokenizer_lib.load_tokenizer(m.tokenizer)
        preset = info.get("preset") or "checkpoint"
        _log.info("model: %s weights from %s (step %s)", info["kind"], info["path"], info["step"])
    else:
        tokenizer_path = m.tokenizer
        tokenizer = tokenizer_lib.load_tokenizer(m.tokenizer or None)
        model_config = models.get_preset(m.preset, **(json.loads(m.preset_overrides) if m.preset_overrides else {}))
        model = models.Qwen2_5_VL(model_config, dtype=DTYPES[m.dtype], param_dtype=DTYPES[m.param_dtype],
                                  remat=bool(m.remat), rngs=nnx.Rngs(int(config.seed)))
        preset = m.preset
        _log.info("model: fresh %s preset", m.preset)
    shard_model(model, mesh, TRAINING_RULES)
    # The data resizes every image to at most data.max_pixels: full-attention vision blocks may then
    # attend frame by frame (a GRPO batch holds each prompt's image G times).
    models.bound_frame_patches(model, int(config.data.max_pixels))
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has only "
                         f"{model.config.text_config.vocab_size}")
    meta = checkpoint_lib.model_meta(model.config, preset=preset, dtype=m.dtype, param_dtype=m.param_dtype,
                                     tokenizer=tokenizer_path)
    return model, tokenizer, meta


def total_steps_for(config: Any, num_records: int) -> int:
    """sft.num_steps, or num_epochs passes over the records in batches of sft.batch_size."""
    if int(config.sft.num_steps) > 0:
        return int(config.sft.num_steps)
    steps = math.ceil(float(config.sft.num_epochs) * num_records / int(config.sft.batch_size))
    if steps < 1:
        raise ValueError("sft.num_steps = 0 and sft.num_epochs gives no step; set one of them")
    return steps


def micro_batch_count(config: Any) -> int:
    batch, micro = int(config.sft.batch_size), int(config.sft.micro_batch_size) or int(config.sft.batch_size)
    if batch % micro:
        raise ValueError(f"sft.batch_size = {batch} is not a multiple of sft.micro_batch_size = {micro}")
    return batch // micro


def held_out_batches(split: datasets.LoadedSplit, tokenizer, encoding: EncodingConfig, model_config,
                     *, num_examples: int, batch_size: int) -> list[dict]:
    """The held-out loss batches, encoded once: the first `num_examples` test records that have a
    reference target (`encoding.target`: a description, or the labels of a compact target), in
    batches of `batch_size`; the last one is filled up with copies whose targets are masked (same
    shape, no weight). Empty when no test record has one."""
    indices = [i for i, record in enumerate(split.records) if has_target(record, encoding.target)]
    if num_examples > 0:
        indices = indices[:num_examples]
    examples = [encode_sft_example(split.source[i]["record"], tokenizer, encoding,
                                   images=pipeline.element_images(split.source[i])) for i in indices]
    collate = batching.SFTCollator(model_config=model_config, num_micro_batches=1, max_length=encoding.max_length,
                                   pad_id=pipeline.pad_id_of(tokenizer))
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        filler = [evaluation.without_targets(chunk[-1])] * (batch_size - len(chunk))
        batches.append(batching.split_info(collate(chunk + filler))[0])
    return batches


def load_stage1_splits(config: Any, workdir: str, target: str) -> tuple[datasets.LoadedSplit, datasets.LoadedSplit]:
    """(the "sft" split, the records of it SFT trains on for `target`), the split read once.

    description: both are the "sft" split; a record without a description is a bad row (`data.on_error`).
    compact: the split's records with an emotion label and an annotated AU set (`data.examples.has_target`);
    an empty result is an error. The vision warm-up takes the first (the same faces whatever the target).
    """
    if target == "description":
        split = datasets.load_split(config, "sft", workdir=workdir, require_description=True)
        return split, split
    split = datasets.load_split(config, "sft", workdir=workdir)
    keep = [i for i, record in enumerate(split.records) if has_target(record, target)]
    if not keep:
        raise ValueError(f"data.target = 'compact': the sft split ({split.summary}) holds no record with an "
                         f"emotion label and an annotated AU set")
    if len(keep) == len(split.records):
        return split, split
    _log.info("compact targets: %d of %d stage 1 records have an emotion label and an annotated AU set",
              len(keep), len(split.records))
    return split, datasets.LoadedSplit(
        name=split.name, source=datasets.Subset(split.source, keep), records=tuple(split.records[i] for i in keep),
        image_root=split.image_root, report_path=split.report_path,
        summary=f"{split.summary}; {len(split.records) - len(keep)} without a compact target")


def load_test_split(config: Any, workdir: str) -> datasets.LoadedSplit | None:
    """The held-out split, or None for JSONL data without data.eval_jsonl (then nothing is evaluated)."""
    if config.data.source == "jsonl" and not config.data.eval_jsonl:
        _log.warning("config.data.eval_jsonl is empty: no held-out evaluation in this run")
        return None
    return datasets.load_split(config, "test", workdir=workdir)


class _DropLibraryChatter(logging.Filter):
    """Drops orbax's per-save INFO lines (a dozen per checkpoint); its warnings and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_library_logs() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropLibraryChatter) for f in handler.filters):
            handler.addFilter(_DropLibraryChatter())


@dataclasses.dataclass
class Fitted:
    """What `fit` returns: the loop's outcome, the final evaluation, the loss curve's path."""

    outcome: loop.LoopOutcome
    final_eval: dict
    loss_curve: Any
    checkpoint_path: str


def fit(config: Any, workdir: str, *, model: nnx.Module, dataset, total_steps: int, mesh: jax.sharding.Mesh,
        checkpointer: checkpoint_lib.Checkpointer, run_meta: dict,
        make_evaluate: Callable[[Any, step_lib.EvalStep], Callable | None], eval_every: int) -> Fitted:
    """The supervised training loop of stage 0 (pretraining) and stage 1 (SFT): next-token loss on the
    batches of `dataset` (a grain MapDataset of `SFTCollator` batches) for `total_steps`, resuming from
    `checkpointer`'s latest step (train state and data position), with metrics, checkpoints, SIGTERM
    handling, and `evaluate(state, step, final=...)` from `make_evaluate(model_def, eval_step)` every
    `eval_every` steps and once at the end of a completed run."""
    is_main = jax.process_index() == 0
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
    model_def, state, state_shardings = state_lib.create_train_state(model, tx, seed=int(config.seed), mesh=mesh)
    del model  # the train state owns the parameters from here on
    train_step = step_lib.TrainStep(model_def, sft_loss, tx, schedule, state_shardings, mesh, rules=TRAINING_RULES)
    eval_step = step_lib.EvalStep(model_def, sft_loss, state_shardings.params, mesh, rules=TRAINING_RULES)
    iterator = pipeline.make_iterator(dataset, num_workers=int(config.data.num_workers),
                                      num_threads=pipeline.default_num_threads())
    latest = checkpointer.latest_step()
    if latest is not None:
        restored = checkpointer.restore(latest, state, state_shardings)
        state = restored.state
        if restored.data_state is not None:
            iterator.set_state(restored.data_state)
        _log.info("resumed from %s at step %d", checkpointer.directory, restored.step)
    start_step = int(jax.device_get(state.step))
    run_meta = {**run_meta, "config": json.loads(config.to_json_best_effort())}

    logger = MetricsLogger(workdir, total_steps=total_steps, start_step=start_step, enabled=is_main,
                           tensorboard=bool(config.logging.tensorboard),
                           progress_bar=bool(config.logging.progress_bar))
    batch_log = StepJsonl(os.path.join(workdir, BATCH_LOG_FILE), start_step) if is_main else None
    shardings_cache: dict = {}

    def next_batch(current_state):
        del current_state
        arrays, info = batching.split_info(next(iterator))
        signature = step_lib.batch_signature(arrays)
        if signature not in shardings_cache:
            shardings_cache[signature] = step_lib.batch_shardings(arrays, mesh)
        return step_lib.put_batch(arrays, shardings_cache[signature]), info

    def on_batch(step_index: int, info: dict) -> None:
        if batch_log is not None:
            batch_log.write({"step": step_index + 1, "ids": [i for group in info["ids"] for i in group],
                             "truncated": info["truncated"]})

    evaluate = make_evaluate(model_def, eval_step)
    with loop.PreemptionGuard() as guard:
        outcome = loop.run_loop(
            state, train_step, next_batch,
            total_steps=total_steps, checkpointer=checkpointer,
            checkpoint_every=int(config.checkpoint.every_steps), meta=run_meta, logger=logger,
            log_every=int(config.logging.every_steps), data_state=iterator.get_state,
            evaluate=(lambda s, step: evaluate(s, step, final=False)) if evaluate is not None else None,
            eval_every=eval_every, guard=guard, on_batch=on_batch, evaluate_at_end=False,
        )
        if outcome.status == "completed" and evaluate is not None:
            final_eval = evaluate(outcome.state, outcome.step, final=True)
            logger.write(outcome.step, final_eval, split="eval")
        else:
            final_eval = outcome.eval_metrics
    checkpointer.close()
    curve = logger.close()
    if batch_log is not None:
        batch_log.close()
    return Fitted(outcome, final_eval, curve, os.path.join(checkpointer.directory, str(outcome.step)))


def run_sft(config: Any, workdir: str) -> dict:
    """Runs stage 1 into `workdir` (resuming from it when it holds a checkpoint); returns the result dict."""
    start_time = time.time()
    quiet_library_logs()
    workdir = files.makedirs(workdir)  # a local folder (made absolute) or a URL such as gs://bucket/run
    is_main = jax.process_index() == 0
    mesh = mesh_from_config(config)
    config_validation.check_batch_split(config, dict(mesh.shape))
    model, tokenizer, model_meta = build_model(config, mesh)
    encoding = EncodingConfig.from_config(config)

    _, train_split = load_stage1_splits(config, workdir, encoding.target)
    test_split = load_test_split(config, workdir)
    total_steps = total_steps_for(config, len(train_split))
    num_micro = micro_batch_count(config)
    _log.info("SFT: %d training records, %d held-out, %d steps of %d sequences (%d micro-batches)",
              len(train_split), len(test_split) if test_split else 0, total_steps, config.sft.batch_size, num_micro)

    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                               async_save=bool(config.checkpoint.async_save))

    model_config = model.config
    dataset = pipeline.sft_dataset(
        train_split.source, tokenizer, encoding, model_config, seed=int(config.seed),
        batch_size=int(config.sft.batch_size), num_micro_batches=num_micro, shuffle=bool(config.data.shuffle))

    def make_evaluate(model_def, eval_step):
        if test_split is None:
            return None
        eval_batches = held_out_batches(
            test_split, tokenizer, encoding, model_config, num_examples=int(config.sft.eval_num_examples),
            batch_size=int(config.sft.eval_batch_size))
        generator = evaluation.GreedyEvaluator.create(
            tokenizer, encoding, model_config, max_new_tokens=int(config.sft.eval_max_new_tokens),
            batch_size=int(config.sft.eval_batch_size), mesh=mesh)

        def evaluate(current_state, step: int, *, final: bool = False) -> dict:
            row = evaluation.held_out_loss(eval_step, current_state.params, eval_batches) if eval_batches else {}
            if generator is None:
                return row
            count = int(config.sft.final_eval_num_examples if final else config.sft.eval_num_examples)
            row.update(generator.evaluate(model_def.merge(current_state.params), test_split, num_examples=count,
                                          predictions_path=os.path.join(workdir, "predictions-test.jsonl")
                                          if final and is_main else None))
            return row

        return evaluate

    fitted = fit(config, workdir, model=model, dataset=dataset, total_steps=total_steps, mesh=mesh,
                 checkpointer=checkpointer, run_meta={**model_meta, "stage": "sft"},
                 make_evaluate=make_evaluate, eval_every=int(config.sft.eval_every_steps))
    outcome, final_eval, curve = fitted.outcome, fitted.final_eval, fitted.loss_curve

    result = {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": total_steps,
        "train_records": len(train_split),
        "test_records": len(test_split) if test_split is not None else 0,
        "final_train": outcome.last_metrics,
        "eval": final_eval,
        "generation_available": test_split is not None,
        "loss_curve": curve,
        "checkpoint": fitted.checkpoint_path,
        "wall_seconds": round(time.time() - start_time, 1),
    }
    if is_main:
        files.write_text(os.path.join(workdir, RESULT_FILE), json.dumps(result, indent=2))
        _log.info("SFT %s at step %d: %s", outcome.status, outcome.step,
                  ", ".join(f"{k} {v:.4g}" for k, v in final_eval.items() if isinstance(v, (int, float))))
    return result
