"""Stage 0: perception pretraining of the demo base model (a VLM that sees faces, no emotions).

    python launch/train.py --config=configs/pretrain.py --workdir=W
    python launch/convert.py --to=hf --src=W --dst=DIR          # a Hugging Face Qwen2.5-VL folder

The paper post-trains Qwen2.5-VL-7B-Instruct, which already perceives faces. The demo model is small
enough to train here, so the project makes its own base: a fresh `model.preset` VLM learns to describe
the facial movements of synthetic faces with their AU codes (`data.perception`), then stages 1-3 start
from it exactly as they start from a published checkpoint.

`run_pretrain(config, workdir)`:
  1. the perception corpus (`pretrain.num_train_faces` new identities, rendered once and cached under
     `pretrain.corpus_dir`) and its held-out faces (other new identities);
  2. a supervised vision warm-up on the corpus faces (`train.vision_warmup`, AU targets only), so the
     language model meets image tokens that already carry the AUs;
  3. next-token training on perception turns (describe / list / yes-no, drawn per example and epoch)
     with the shared supervised loop (`train.sft.fit`: resume, SIGTERM, checkpoints, metrics);
  4. the perception evaluation (`perception_metrics`): greedy descriptions of the held-out faces scored
     by AU micro-F1 against the rendered AUs, beside the same prompts with a blank image and with each
     prompt given another face's image. Written to WORKDIR/pretrain_result.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import grain
import jax
from PIL import Image

from facialr1_jax.data import batching, datasets, perception, pipeline, sources
from facialr1_jax.data import images as image_lib
from facialr1_jax.data.examples import EncodingConfig, PromptExample, encode_prompt_example
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.parallel import files
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train import evaluation, sft, vision_warmup
from facialr1_jax.train.metrics import ProgressBar

_log = logging.getLogger(__name__)

RESULT_FILE = "pretrain_result.json"
CARD_FILE = "README.md"
TRAIN_COMMAND = "python launch/train.py --config=configs/pretrain.py --workdir=W"
PREDICTIONS_FILE = "predictions-perception.jsonl"
BLANK_GREY = (128, 128, 128)


def encoding_of(config: Any) -> EncodingConfig:
    data = config.data
    return EncodingConfig(
        prompt_variant=data.prompt_variant,
        image=image_lib.ImageConfig(min_pixels=int(data.min_pixels), max_pixels=int(data.max_pixels)),
        max_prompt_tokens=int(data.max_prompt_tokens), max_target_tokens=int(data.max_target_tokens))


def load_corpus(config: Any, workdir: str) -> tuple[datasets.LoadedSplit, datasets.LoadedSplit]:
    """(train, eval) splits of the perception corpus, built on first use."""
    p = config.pretrain
    paths = perception.ensure_corpus(p.corpus_dir, num_train=int(p.num_train_faces), num_eval=int(p.num_eval_faces),
                                     image_size=int(config.data.builtin_image_size), seed=int(p.corpus_seed),
                                     progress=True)
    image_config = image_lib.ImageConfig(min_pixels=int(config.data.min_pixels),
                                         max_pixels=int(config.data.max_pixels))
    splits = []
    for name, jsonl in (("train", paths.train), ("eval", paths.eval)):
        report = os.path.join(workdir, f"data_report-perception-{name}.json")
        source = sources.FEAJsonlSource(jsonl, paths.images, on_error=config.data.on_error, report_path=report,
                                        decode="bytes", image_check="header", image_config=image_config)
        summary = source.scan.summary()
        _log.info("perception corpus %s: %s", name, summary)
        splits.append(datasets.LoadedSplit(name=name, source=source, records=tuple(source.records),
                                           image_root=str(paths.images),
                                           report_path=report if os.path.exists(report) else None,
                                           summary=summary))
    return splits[0], splits[1]


def perception_dataset(split: datasets.LoadedSplit, tokenizer, encoding: EncodingConfig, model_config, *,
                       seed: int, batch_size: int) -> grain.MapDataset:
    """Endless shuffled batches of perception turns (a fresh permutation and fresh turns every epoch)."""
    collate = batching.SFTCollator(model_config=model_config, num_micro_batches=1, max_length=encoding.max_length,
                                   pad_id=pipeline.pad_id_of(tokenizer))
    return (grain.MapDataset.source(split.source).seed(seed).shuffle().repeat()
            .random_map(perception.EncodePerception(tokenizer, encoding))
            .batch(batch_size, drop_remainder=True, batch_fn=collate))


def au_micro_f1(predicted: Sequence[frozenset[str]], truth: Sequence[Sequence[str]]) -> float:
    """Pooled F1 of AU sets over faces (1.0 when neither side names any AU)."""
    true_positive = sum(len(p & frozenset(t)) for p, t in zip(predicted, truth))
    false_positive = sum(len(p - frozenset(t)) for p, t in zip(predicted, truth))
    false_negative = sum(len(frozenset(t) - p) for p, t in zip(predicted, truth))
    denominator = 2 * true_positive + false_positive + false_negative
    return 2 * true_positive / denominator if denominator else 1.0


def blank_image(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), BLANK_GREY)


def perception_prompts(records: Sequence[FEARecord], images: Sequence[Any], tokenizer,
                       encoding: EncodingConfig, instruction: str) -> list[PromptExample]:
    return [encode_prompt_example(record, tokenizer, encoding, images=[image], instruction=instruction)
            for record, image in zip(records, images)]


def perception_metrics(model, split: datasets.LoadedSplit, tokenizer, encoding: EncodingConfig, *,
                       num_faces: int, batch_size: int, max_new_tokens: int, mesh=None, image_size: int = 112,
                       predictions_path: str | None = None, baselines: bool = True) -> dict:
    """Greedy answers to `perception.EVAL_INSTRUCTION` on the first `num_faces` held-out faces (0 = all):
    AU micro-F1 against the rendered AUs, and with `baselines` the same prompts with a blank grey image
    and with each face's image swapped for the next face's (scored against the prompt's own face)."""
    count = len(split) if num_faces <= 0 else min(num_faces, len(split))
    elements = [split.source[i] for i in range(count)]
    records = [element["record"] for element in elements]
    images = [pipeline.element_images(element)[0] for element in elements]
    generator = evaluation.GreedyEvaluator.create(tokenizer, encoding, model.config, max_new_tokens=max_new_tokens,
                                                  batch_size=batch_size, mesh=mesh)
    truth = [record.aus for record in records]

    def score(prompt_images) -> tuple[float, list[str]]:
        prompts = perception_prompts(records, prompt_images, tokenizer, encoding, perception.EVAL_INSTRUCTION)
        texts = generator.generate_texts(model, prompts)
        return au_micro_f1([perception.predicted_aus(text) for text in texts], truth), texts

    f1, texts = score(images)
    row = {"faces": count, "au_micro_f1": round(f1, 4)}
    if baselines:
        row["blank_image_au_micro_f1"] = round(score([blank_image(image_size)] * count)[0], 4)
        row["swapped_image_au_micro_f1"] = round(score(images[1:] + images[:1])[0], 4)
    if predictions_path is not None:
        files.write_text(predictions_path, "".join(
            json.dumps({"id": record.id, "prediction": text, "aus": list(record.aus)}) + "\n"
            for record, text in zip(records, texts)))
    return row


def maybe_warm_up_vision(config: Any, model, train: datasets.LoadedSplit, held_out: datasets.LoadedSplit, *,
                         workdir: str, mesh, resuming: bool, is_main: bool) -> dict | None:
    """The supervised vision warm-up on the training faces (`pretrain.vision_warmup_steps` > 0; AU targets,
    and emotion targets for records that have them, which the corpus's never do); writes
    WORKDIR/vision_warmup.json and returns its metrics. Skipped (None) when resuming, since the checkpoint
    holds the warmed tower, and for `model.checkpoint` weights, whose tower is trained already."""
    p = config.pretrain
    steps = int(p.vision_warmup_steps)
    if steps <= 0:
        return None
    if resuming or config.model.checkpoint:
        _log.info("vision warm-up skipped: %s", "resuming from a checkpoint" if resuming else
                  "the model comes from model.checkpoint")
        return None
    train_faces = vision_warmup.LabelledFaces([train])
    eval_faces = vision_warmup.LabelledFaces([held_out], train_faces.labels.au_vocabulary)
    bar = ProgressBar(steps) if is_main and bool(config.logging.progress_bar) else None
    result = vision_warmup.run_vision_warmup(
        model, train_faces, steps=steps, batch_size=int(p.vision_warmup_batch_size), lr=float(p.vision_warmup_lr),
        seed=int(config.seed), mesh=mesh, eval_faces=eval_faces, log_every=int(config.logging.every_steps),
        image_config=image_lib.ImageConfig(min_pixels=int(config.data.min_pixels),
                                           max_pixels=int(config.data.max_pixels)),
        progress=(lambda step, total, row: bar.update(step, {"loss": f"{row['loss']:.4f}"})) if bar else None)
    if bar is not None:
        bar.finish()
    if is_main:
        files.write_text(os.path.join(workdir, vision_warmup.RESULT_FILE), json.dumps(result, indent=2))
    return result


def run_pretrain(config: Any, workdir: str) -> dict:
    """Runs stage 0 into `workdir` (resuming from it when it holds a checkpoint); returns the result dict."""
    start_time = time.time()
    commit = git_commit(os.path.dirname(os.path.abspath(__file__)))  # the code this launch runs
    sft.quiet_library_logs()
    workdir = files.makedirs(workdir)
    is_main = jax.process_index() == 0
    p = config.pretrain
    mesh = sft.mesh_from_config(config)
    model, tokenizer, model_meta = sft.build_model(config, mesh)
    encoding = encoding_of(config)
    train, held_out = load_corpus(config, workdir)
    total_steps = int(p.num_steps)
    _log.info("pretraining: %d corpus faces, %d held-out, %d steps of %d turns", len(train), len(held_out),
              total_steps, int(p.batch_size))

    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                               async_save=bool(config.checkpoint.async_save))
    warmup_result = maybe_warm_up_vision(config, model, train, held_out, workdir=workdir, mesh=mesh,
                                         resuming=checkpointer.latest_step() is not None, is_main=is_main)

    dataset = perception_dataset(train, tokenizer, encoding, model.config, seed=int(config.seed),
                                 batch_size=int(p.batch_size))

    def make_evaluate(model_def, eval_step):
        del eval_step

        def evaluate(current_state, step: int, *, final: bool = False) -> dict:
            return perception_metrics(
                model_def.merge(current_state.params), held_out, tokenizer, encoding,
                num_faces=int(p.final_eval_num_faces if final else p.eval_num_faces),
                batch_size=int(p.eval_batch_size), max_new_tokens=int(p.eval_max_new_tokens), mesh=mesh,
                image_size=int(config.data.builtin_image_size), baselines=final,
                predictions_path=os.path.join(workdir, PREDICTIONS_FILE) if final and is_main else None)

        return evaluate

    fitted = sft.fit(config, workdir, model=model, dataset=dataset, total_steps=total_steps, mesh=mesh,
                     checkpointer=checkpointer, run_meta={**model_meta, "stage": "pretrain"},
                     make_evaluate=make_evaluate, eval_every=int(p.eval_every_steps))
    outcome = fitted.outcome
    result = {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": total_steps,
        "commit": commit,
        "config": json.loads(config.to_json_best_effort()),
        "corpus": {"train_faces": len(train), "eval_faces": len(held_out), "corpus_seed": int(p.corpus_seed),
                   "identity_seed_base": perception.IDENTITY_SEED_BASE},
        "final_train": outcome.last_metrics,
        "eval": fitted.final_eval,
        "vision_warmup": warmup_result,
        "loss_curve": fitted.loss_curve,
        "checkpoint": fitted.checkpoint_path,
        "wall_seconds": round(time.time() - start_time, 1),
    }
    if is_main:
        files.write_text(os.path.join(workdir, RESULT_FILE), json.dumps(result, indent=2))
        _log.info("pretraining %s at step %d: %s", outcome.status, outcome.step, json.dumps(fitted.final_eval))
    return result


# ------------------------------------------------------------------------------------ model card
def config_overrides(run_config: dict, default_config: dict, prefix: str = "") -> list[str]:
    """`--config.KEY=VALUE` flags that turn `default_config` into `run_config` (nested dicts of a config)."""
    flags = []
    for key, value in run_config.items():
        default = default_config.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            flags += config_overrides(value, default, f"{prefix}{key}.")
        elif value != default:
            flags.append(f"--config.{prefix}{key}={value}")
    return flags


def git_commit(directory: str) -> str:
    """The checkout's HEAD commit (with "-dirty" when tracked files differ), or "" outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=directory, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("-dirty" if dirty else "")


def model_card(result: dict, run_config: dict, default_config: dict, *, commit: str, name: str = "demo-base") -> str:
    """The model card (README.md) of an exported stage 0 run: what it is, how to rebuild it, its metrics."""
    overrides = [flag for flag in config_overrides(run_config, default_config)
                 if not flag.startswith(("--config.logging.", "--config.pretrain.corpus_dir="))]
    command = " ".join([TRAIN_COMMAND] + overrides)
    evaluation_row = result.get("eval") or {}
    warmup = (result.get("vision_warmup") or {}).get("eval", {})
    p = run_config["pretrain"]
    minutes = result.get("wall_seconds", 0) / 60
    lines = [
        f"# {name}: the demo base model of facialr1_jax",
        "",
        "A small Qwen2.5-VL (the `demo` preset: a 4-layer, 256-wide language model over the bundled 1,536-token",
        "tokenizer and a 2-block vision tower) trained from scratch by stage 0 of facialr1_jax to describe the",
        "facial movements of synthetic faces with their FACS action-unit codes. It never saw an emotion word:",
        "stages 1 and 2 teach the AU -> emotion mapping on top of it, as the paper's stages do on",
        "Qwen2.5-VL-7B-Instruct. Load it by name: `--config.model.checkpoint=demo-base` or",
        "`FacialR1.load(\"demo-base\")`; `transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained` reads it too.",
        "",
        "## Rebuild it",
        "",
        "```",
        command,
        "python launch/convert.py --to=hf --src=W --dst=facialr1_jax/assets/demo-base",
        "```",
        "",
        f"Trained at commit `{commit or 'unknown'}` with seed {run_config['seed']} on the perception corpus of",
        f"corpus seed {p['corpus_seed']}: {p['num_train_faces']:,} training faces and {p['num_eval_faces']:,} held-out",
        f"faces, every one a new identity (identity seeds from {result['corpus']['identity_seed_base']:,} up; the",
        "built-in demo splits draw theirs below it). "
        f"{p['vision_warmup_steps']} vision warm-up steps of {p['vision_warmup_batch_size']} faces, then",
        f"{result['step']:,} steps of {p['batch_size']} perception turns (describe, list, yes/no); "
        f"{minutes:.0f} minutes wall for its last launch on the",
        "machine that trained it (2 CPU cores, shared with other work).",
        "",
        "## Measured",
        "",
        f"Greedy answers to \"{perception.EVAL_INSTRUCTION}\" on the {evaluation_row.get('faces', 0)} held-out faces,",
        "AU micro-F1 against the rendered AUs (`pretrain_result.json` of the run):",
        "",
        "| input | AU micro-F1 |",
        "|---|---|",
        f"| the face | {evaluation_row.get('au_micro_f1', float('nan')):.3f} |",
        f"| a blank grey image | {evaluation_row.get('blank_image_au_micro_f1', float('nan')):.3f} |",
        f"| another face's image | {evaluation_row.get('swapped_image_au_micro_f1', float('nan')):.3f} |",
        "",
    ]
    for note in result.get("notes", []):
        lines += [note, ""]
    if warmup:
        lines += [f"The vision warm-up's throw-away linear head alone: AU micro-F1 {warmup['au_micro_f1']:.3f} on the",
                  f"{warmup['faces']} held-out faces with at least one labelled AU.", ""]
    lines += ["## Run config", "", "```json", json.dumps(run_config, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_model_card(src: str, dst: str, *, run_config: dict, default_config: dict) -> str | None:
    """Writes dst/README.md for the stage 0 run in workdir `src` (its `pretrain_result.json`; `run_config`
    from its checkpoint meta); None when `src` holds no finished pretraining run."""
    result_path = os.path.join(src, RESULT_FILE)
    if not os.path.isfile(result_path):
        return None
    with open(result_path, encoding="utf-8") as stream:
        result = json.load(stream)
    warmup_path = os.path.join(src, vision_warmup.RESULT_FILE)
    if not result.get("vision_warmup") and os.path.isfile(warmup_path):  # a resumed run warmed up earlier
        with open(warmup_path, encoding="utf-8") as stream:
            result["vision_warmup"] = json.load(stream)
    commit = result.get("commit") or git_commit(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(dst, CARD_FILE)
    files.write_text(path, model_card(result, run_config, default_config, commit=commit))
    return path
