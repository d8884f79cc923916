"""Supervised vision warm-up: teach a freshly initialised vision tower to see faces.

Stage 0 (`train.pretrain`) trains the demo base model from scratch. Next-token loss alone reaches the
vision tower only through the language model, which at first reads nothing from the image tokens, so
the tower would learn little. This short phase, run before stage 0's language steps, trains the tower
directly:

    vision tower (+ patch merger) -> merged image tokens (in processor order)
        -> flattened -> one linear layer -> AU logits (sigmoid BCE) + emotion logits (softmax CE)

trained with AdamW on the labelled training faces (the perception corpus; never the held-out faces),
images preprocessed exactly as the model sees them (`data.images.ImageConfig.preprocess`). The head is
thrown away afterwards; only the vision tower's parameters are written back into the model, the
language model is never touched.

Why a linear head on the FLATTENED tokens and not on their mean: the Qwen2.5-VL tower has no absolute
position embedding (only 2-D rotary positions inside attention), so a mean over tokens cannot tell a
raised brow from a raised lip corner (a mean-pooled head stayed near chance on the built-in faces).
The language model, too, reads the image tokens position by position.

Labels: the AU vocabulary is every AU of the training records. A record's AU set counts as annotated
when it is non-empty or its dataset profile (`fea.profiles`) annotates AUs (so a neutral face of an
AU-labelled set teaches "no AU"); records of emotion-only sets are masked out of the AU loss, records
without an emotion label out of the emotion loss, and records with neither are left out.

All training images must share one patch grid (true for the built-in faces and any set of equally
sized images): the tower runs image by image under `jax.vmap` (each image its own attention segment,
as in the packed call, without attending over the whole batch), and the head needs a fixed token
count. The first image whose grid differs is an error naming its record.

Deterministic given `seed`: head initialisation, data order (grain, per-epoch reshuffles) and the
jitted updates, so a run that restarts from scratch repeats the same warm-up.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facialr1_jax.data import images as image_lib
from facialr1_jax.data import pipeline
from facialr1_jax.fea.aus import au_number
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.profiles import find_profile
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.models.qwen2_5_vl.vision import vision_plan
from facialr1_jax.parallel import xla_options
from facialr1_jax.train import optim
from facialr1_jax.train.step import BATCH_MESH_AXES

_log = logging.getLogger(__name__)

RESULT_FILE = "vision_warmup.json"

# Schedule and regularisation of the warm-up (the step count, batch and peak lr are config knobs):
WARMUP_FRACTION = 0.1  # linear lr warm-up over this share of the steps, then cosine decay
END_LR_FRACTION = 0.05  # the cosine ends at this fraction of the peak lr
WEIGHT_DECAY = 0.05  # AdamW decay on matrices (optim.decay_mask)
GRAD_CLIP = 1.0  # global-norm clipping
# The AU loss is a mean over the vocabulary of per-AU BCEs; scaled by (vocabulary / this) it weighs
# about as much as the emotion CE (a face shows a few AUs, each a "class" of the AU task).
AU_LOSS_ACTIVE_AUS = 4.0
EVAL_BATCH = 100  # images per forward pass in the held-out evaluation


def has_au_annotation(record: FEARecord) -> bool:
    """Whether the record's AU set is a label (possibly the empty set) rather than missing."""
    if record.aus:
        return True
    profile = find_profile(record.dataset)
    return profile is not None and profile.annotated_aus != ()


@dataclasses.dataclass(frozen=True)
class FaceLabels:
    """Targets of a list of records over one AU vocabulary (row i belongs to record i)."""

    au_vocabulary: tuple[str, ...]
    aus: np.ndarray  # (N, A) float32 multi-hot
    au_known: np.ndarray  # (N,) bool: the AU set is annotated
    emotions: np.ndarray  # (N,) int32 index into EMOTIONS, -1 when there is no emotion label

    @classmethod
    def of(cls, records: Sequence[FEARecord], au_vocabulary: Sequence[str]) -> FaceLabels:
        column = {au: i for i, au in enumerate(au_vocabulary)}
        aus = np.zeros((len(records), len(column)), np.float32)
        for row, record in enumerate(records):
            for au in record.aus:
                if au in column:  # AUs outside the training vocabulary cannot be predicted; ignored
                    aus[row, column[au]] = 1.0
        au_known = np.array([has_au_annotation(r) for r in records], bool)
        emotions = np.array([EMOTIONS.index(r.label) if r.label in EMOTIONS else -1 for r in records], np.int32)
        return cls(tuple(au_vocabulary), aus, au_known, emotions)


class LabelledFaces:
    """Random-access labelled faces from one or more loaded splits (`data.datasets.LoadedSplit`).

    Each record id is kept once (JSONL runs read stage 1 and stage 2 from the same file), records with
    neither an annotated AU set nor an emotion label are left out. `faces[i]` is
    {"image": the record's first image (encoded bytes or decoded), "index": i}; the labels are `labels`.
    """

    def __init__(self, splits: Sequence[Any], au_vocabulary: Sequence[str] | None = None):
        entries, records, seen = [], [], set()
        for split in splits:
            for index, record in enumerate(split.records):
                if record.id in seen or not (has_au_annotation(record) or record.label in EMOTIONS):
                    continue
                seen.add(record.id)
                entries.append((split.source, index))
                records.append(record)
        if not records:
            raise ValueError("vision warm-up: the given splits hold no record with an AU or emotion label")
        if au_vocabulary is None:
            au_vocabulary = sorted({au for r in records for au in r.aus}, key=au_number)
        self._entries = entries
        self.records = tuple(records)
        self.labels = FaceLabels.of(self.records, au_vocabulary)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict:
        source, row = self._entries[int(index)]
        element = source[row]
        return {"image": pipeline.element_images(element)[0], "index": int(index), "id": element["record"].id}


@dataclasses.dataclass(frozen=True)
class PreprocessFace:
    """grain map: a face -> {"pixel_values" (P, patch_dim), "index"}; checks the patch grid."""

    image_config: image_lib.ImageConfig
    grid: tuple[int, int, int]

    def __call__(self, face: dict) -> dict:
        pixel_values, grid = self.image_config.preprocess(face["image"])
        if tuple(int(g) for g in grid) != self.grid:
            raise ValueError(f"vision warm-up: the image of record {face['id']!r} has patch grid {list(grid)}, "
                             f"the first training image {list(self.grid)}; the warm-up needs images of one grid "
                             f"(equal sizes); set sft.vision_warmup_steps = 0 for mixed sizes")
        return {"pixel_values": pixel_values, "index": np.int32(face["index"])}


def _stack(faces: Sequence[dict]) -> dict:
    return {key: np.stack([face[key] for face in faces]) for key in faces[0]}


class WarmupHead(nnx.Module):
    """Flattened merged image tokens -> AU logits and emotion logits (one linear layer)."""

    def __init__(self, tokens: int, width: int, num_aus: int, *, rngs: nnx.Rngs):
        self.num_aus = num_aus
        self.linear = nnx.Linear(tokens * width, num_aus + len(EMOTIONS), rngs=rngs)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = self.linear(features.reshape(features.shape[0], -1))
        return logits[:, :self.num_aus], logits[:, self.num_aus:]


def warmup_loss(au_logits, emotion_logits, aus, au_known, emotions):
    """(total, au loss, emotion loss): masked means, each over the records that carry that label."""
    au_mask = au_known.astype(jnp.float32)
    per_record = optax.sigmoid_binary_cross_entropy(au_logits, aus).mean(axis=-1)
    au_loss = jnp.sum(per_record * au_mask) / jnp.maximum(jnp.sum(au_mask), 1.0)
    au_loss = au_loss * (aus.shape[-1] / AU_LOSS_ACTIVE_AUS)
    emotion_mask = (emotions >= 0).astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(emotion_logits, jnp.maximum(emotions, 0))
    emotion_loss = jnp.sum(cross_entropy * emotion_mask) / jnp.maximum(jnp.sum(emotion_mask), 1.0)
    return au_loss + emotion_loss, au_loss, emotion_loss


def micro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Pooled F1 of two multi-hot [faces, AUs] arrays; 1.0 when neither has a positive (nothing to miss).

    Also the AU score of the pixel and feature probes in benchmarks/ (synthface_probe, demo_perception).
    """
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    true_positive = np.sum(predicted & truth)
    denominator = 2 * true_positive + np.sum(predicted & ~truth) + np.sum(~predicted & truth)
    return float(2 * true_positive / denominator) if denominator else 1.0


def _batch_sharding(mesh: Mesh | None, batch_size: int) -> NamedSharding | None:
    if mesh is None:
        return None
    axes = tuple(a for a in BATCH_MESH_AXES if a in mesh.shape and mesh.shape[a] > 1)
    split = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if axes and batch_size % split == 0:
        return NamedSharding(mesh, PartitionSpec(axes if len(axes) > 1 else axes[0]))
    return NamedSharding(mesh, PartitionSpec())


def run_vision_warmup(
    model: nnx.Module,
    train_faces: LabelledFaces,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    image_config: image_lib.ImageConfig,
    eval_faces: LabelledFaces | None = None,
    mesh: Mesh | None = None,
    log_every: int = 25,
    progress: Callable[[int, int, dict], None] | None = None,
    num_threads: int | None = None,
) -> dict:
    """Trains `model.visual` (in place) with a throw-away head; returns the metrics dict.

    `eval_faces` (held-out faces, never trained on): AU micro-F1 and emotion accuracy of the head at
    the end, a measure of what the tower now sees. `progress(step, steps, scalars)` is called after
    every logged step; log lines go to this module's logger either way.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"vision warm-up needs steps >= 1, batch_size >= 1 and lr > 0; got steps={steps}, "
                         f"batch_size={batch_size}, lr={lr}")
    start_wall = time.time()
    labels = train_faces.labels
    first = train_faces[0]
    _, first_grid = image_config.preprocess(first["image"])
    grid = tuple(int(g) for g in first_grid)
    vision_config = model.config.vision_config
    plan = vision_plan([grid], vision_config)
    tokens = grid[0] * grid[1] * grid[2] // vision_config.merge_unit

    vision_graphdef, vision_params = nnx.split(model.visual, nnx.Param)
    vision_shardings = jax.tree.map(lambda leaf: leaf.sharding, vision_params)
    head = WarmupHead(tokens, vision_config.out_hidden_size, len(labels.au_vocabulary),
                      rngs=nnx.Rngs(seed))
    head_graphdef, head_params = nnx.split(head, nnx.Param)
    params = {"vision": vision_params, "head": head_params}
    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        params["head"] = jax.device_put(head_params, jax.tree.map(lambda _: replicated, head_params))

    schedule = optim.make_schedule(lr=lr, total_steps=steps, warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
                                   schedule="cosine", end_lr_fraction=END_LR_FRACTION)
    tx = optax.chain(optax.clip_by_global_norm(GRAD_CLIP),
                     optax.adamw(schedule, weight_decay=WEIGHT_DECAY, mask=optim.decay_mask))
    opt_state = tx.init(params)

    def logits_of(params, pixel_values):
        visual = nnx.merge(vision_graphdef, params["vision"])
        features = jax.vmap(lambda pixels: visual(pixels, plan))(pixel_values)  # (B, tokens, width)
        return nnx.merge(head_graphdef, params["head"])(features)

    @functools.partial(jax.jit, compiler_options=xla_options.compiler_options())
    def train_step(params, opt_state, batch):
        def loss_fn(params):
            au_logits, emotion_logits = logits_of(params, batch["pixel_values"])
            total, au_loss, emotion_loss = warmup_loss(au_logits, emotion_logits, batch["aus"], batch["au_known"],
                                                       batch["emotions"])
            return total, {"au_loss": au_loss, "emotion_loss": emotion_loss}

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **parts}

    dataset = (grain.MapDataset.source(train_faces).seed(seed).shuffle().repeat()
               .map(PreprocessFace(image_config, grid)).batch(batch_size, drop_remainder=True, batch_fn=_stack))
    iterator = pipeline.make_iterator(dataset, num_threads=num_threads or pipeline.default_num_threads())
    batch_sharding = _batch_sharding(mesh, batch_size)

    def place(array):
        if batch_sharding is None:
            return jnp.asarray(array)
        return jax.make_array_from_process_local_data(batch_sharding, array, array.shape)

    _log.info("vision warm-up: %d steps of %d faces (%d labelled training faces, %d AUs, %d image tokens), "
              "peak lr %g", steps, batch_size, len(train_faces), len(labels.au_vocabulary), tokens, lr)
    history, row = [], {}
    train_start = time.perf_counter()
    for step in range(1, steps + 1):
        faces = next(iterator)
        rows = faces["index"]
        batch = {"pixel_values": faces["pixel_values"], "aus": labels.aus[rows], "au_known": labels.au_known[rows],
                 "emotions": labels.emotions[rows]}
        params, opt_state, metrics = train_step(params, opt_state, {k: place(v) for k, v in batch.items()})
        if step % max(1, log_every) == 0 or step == steps or step == 1:
            row = {"step": step, **{k: float(v) for k, v in metrics.items()},
                   "seconds": round(time.perf_counter() - train_start, 1)}
            history.append(row)
            _log.info("vision warm-up step %d/%d: loss %.4f (AU %.4f, emotion %.4f), %.0f s", step, steps,
                      row["loss"], row["au_loss"], row["emotion_loss"], row["seconds"])
            if progress is not None:
                progress(step, steps, row)
    train_seconds = time.perf_counter() - train_start

    trained_vision = params["vision"]
    if mesh is not None:
        trained_vision = jax.device_put(trained_vision, vision_shardings)
    nnx.update(model.visual, trained_vision)

    result = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "train_faces": len(train_faces), "au_vocabulary": list(labels.au_vocabulary),
              "epochs": round(steps * batch_size / len(train_faces), 2),
              "final_loss": history[-1]["loss"], "first_loss": history[0]["loss"], "history": history,
              "train_seconds": round(train_seconds, 1)}
    if eval_faces is not None:
        result["eval"] = evaluate_head(logits_of, params, eval_faces, labels.au_vocabulary, image_config, grid)
        _log.info("vision warm-up held-out (%d faces): AU micro-F1 %.3f, emotion accuracy %.3f",
                  result["eval"]["faces"], result["eval"]["au_micro_f1"], result["eval"]["emotion_accuracy"])
    result["wall_seconds"] = round(time.time() - start_wall, 1)
    return result


def evaluate_head(logits_of, params, faces: LabelledFaces, au_vocabulary: Sequence[str],
                  image_config: image_lib.ImageConfig, grid: tuple[int, int, int]) -> dict:
    """AU micro-F1 (records with annotated AUs, logits > 0) and emotion accuracy (labelled records)."""
    labels = FaceLabels.of(faces.records, au_vocabulary)
    preprocess = PreprocessFace(image_config, grid)
    predict = jax.jit(logits_of)
    au_predictions, emotion_predictions = [], []
    for start in range(0, len(faces), EVAL_BATCH):
        rows = [preprocess(faces[i])["pixel_values"] for i in range(start, min(start + EVAL_BATCH, len(faces)))]
        count = len(rows)
        rows += [rows[-1]] * (EVAL_BATCH - count)  # one compiled shape; the copies are dropped below
        au_logits, emotion_logits = predict(params, jnp.asarray(np.stack(rows)))
        au_predictions.append(np.asarray(au_logits)[:count] > 0)
        emotion_predictions.append(np.asarray(emotion_logits)[:count].argmax(-1))
    au_predictions, emotion_predictions = np.concatenate(au_predictions), np.concatenate(emotion_predictions)
    has_emotion = labels.emotions >= 0
    return {
        "faces": len(faces),
        "au_micro_f1": round(micro_f1(au_predictions[labels.au_known], labels.aus[labels.au_known]), 4),
        "emotion_accuracy": round(float(np.mean(emotion_predictions[has_emotion] == labels.emotions[has_emotion]))
                                  if has_emotion.any() else float("nan"), 4),
    }
