"""Stage 0 data: a perception corpus of synthetic faces with AU-grounded instructions and replies.

The paper starts from a pretrained VLM that already sees faces. The demo base model is trained here,
from scratch, on this corpus (`train.pretrain`), before stages 1-3 teach the AU -> emotion mapping.

    corpus = ensure_corpus(cache_dir, num_train=64000, num_eval=500, seed=0)   # built once, cached
    instruction, reply = perception_turn(face_aus, rng)                        # one training turn

Faces. Every face is a new person: identity seeds are drawn at or above `IDENTITY_SEED_BASE`, and the
built-in demo splits (`data.demo.plan_split`) draw theirs below it, so no demo identity (train or test)
ever appears here. AU combinations are drawn broadly (`sample_intensities`), so the model has to see each
AU rather than memorise a few prototypes: single AUs, random co-occurring sets of two to five, one-sided
movements of paired features, the emotion prototype tables and their variants (their AUs only; the
emotion is never shown), neutral faces, and trace-level movements that stay unlabelled; intensities span
the labelled range; poses and lighting vary per face (`synthface.sample_capture`).

Turns (`perception_turn`): a description of the visible movements with AU codes in a varied wording
("The brows are lowered (AU4); the upper lip is raised (AU10)."), a bare AU list ("AU4, AU10"), or a
yes/no question about one AU. No reply contains an emotion word (`EMOTION_WORDS`; the tests check every
clause): the AU -> emotion mapping is what stages 1 and 2 teach, as in the paper.

On disk the corpus is the FEA JSONL schema (records of dataset "synthface-AU": the labelled AUs, no
emotion label; `meta_info` keeps the renderer's intensities and seeds) with JPEG images, so it is read,
validated and streamed by the same sources as every other split.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facialr1_jax.data import demo, expressions, reasoning
from facialr1_jax.data.examples import EncodingConfig, TrainExample, encode_turn
from facialr1_jax.data.pipeline import element_images
from facialr1_jax.data.synthface import LATERAL_AUS, RENDERED_AUS
from facialr1_jax.fea.aus import au_number
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.records import FEARecord, write_jsonl

# Bump when the sampler, the renderer's use or the record layout changes what a build contains.
CORPUS_VERSION = 1
# Demo splits draw identity seeds in [0, 2**31); the corpus draws in [2**31, 2**32).
IDENTITY_SEED_BASE = 2**31
DATASET = "synthface-AU"
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}
_SPLIT_STREAMS = {"train": 101, "eval": 102}

# Kinds of face and how often each is drawn (`sample_intensities`).
FACE_KINDS: dict[str, float] = {"single": 0.22, "random_set": 0.40, "prototype": 0.30, "neutral": 0.08}
ONE_SIDED_PROBABILITY = 0.15  # a paired-feature AU acts on one side only
TRACE_PROBABILITY = 0.3  # one or two unlabelled trace-level AUs are added
LABELLED_RANGE = (expressions.LETTER_INTENSITY["A"][0], 1.0)
# Pairs of movements a random set never combines: one region cannot do both at once (lids raised and
# closed, corners up and down, lips pressed and apart, two jaw openings), so the picture could not show them.
EXCLUSIVE_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"AU5", "AU43"}),
    frozenset({"AU12", "AU15"}),
    frozenset({"AU26", "AU27"}),
    frozenset({"AU22", "AU23", "AU24"}),
    frozenset({"AU22", "AU25", "AU26", "AU27"}),
    frozenset({"AU23", "AU25", "AU26", "AU27"}),
    frozenset({"AU24", "AU25", "AU26", "AU27"}),
)

# Turn kinds and their shares (`perception_turn`).
TURN_KINDS: dict[str, float] = {"describe": 0.45, "list": 0.35, "yes_no": 0.20}
# Short instructions: every prompt token costs compute in every training step.
DESCRIBE_INSTRUCTIONS = (
    "Describe the facial movements with their AU codes.",
    "Describe this face in action units.",
    "Which facial movements do you see? Name each with its AU.",
)
LIST_INSTRUCTIONS = (
    "List the active action units.",
    "Which AUs are active? Answer with codes only.",
)
YES_NO_INSTRUCTIONS = (
    "Is {au} present? Answer yes or no.",
    "Does this face show {au}?",
)
# The instruction the perception evaluation asks (greedy); the training draws it too.
EVAL_INSTRUCTION = DESCRIBE_INSTRUCTIONS[0]
SHORT_WORDING_ABOVE = 3  # descriptions of more AUs use each AU's shortest clause
NO_AU_REPLIES = (
    "The face is relaxed: no action unit is active.",
    "A relaxed face; no facial action unit is visible.",
)
NO_AU_LIST = "none"
# Words no reply may contain: the emotions and their adjectives (stages 1-2 teach that mapping).
EMOTION_WORDS: tuple[str, ...] = tuple(EMOTIONS) + (
    "angry", "contemptuous", "disgusted", "afraid", "fearful", "scared", "happy", "joy", "sad",
    "surprised", "smile", "smiling", "frown", "frowning",
)  # fmt: skip
_EMOTION_PATTERN = re.compile(r"\b(?:" + "|".join(EMOTION_WORDS) + r")\b", re.IGNORECASE)


def has_emotion_word(text: str) -> bool:
    return _EMOTION_PATTERN.search(text) is not None


# Description clauses per AU: the stage 1 reasoning writer's, less any that name an emotion (a smile).
AU_CLAUSES: dict[str, tuple[str, ...]] = {
    au: tuple(clause for clause in clauses if not has_emotion_word(clause))
    for au, clauses in reasoning.AU_CLAUSES.items()
}
ONE_SIDED_CLAUSES: dict[str, tuple[str, ...]] = {
    au: tuple(clause for clause in clauses if not has_emotion_word(clause))
    for au, clauses in reasoning.ONE_SIDED_CLAUSES.items()
}


# ------------------------------------------------------------------------------------ faces
def _draw_kind(rng: np.random.Generator, shares: dict[str, float]) -> str:
    names = list(shares)
    weights = np.asarray([shares[name] for name in names], float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _with_side(au: str, rng: np.random.Generator) -> str:
    """`au`, or its one-sided key ("R12" / "L12") for a paired feature with ONE_SIDED_PROBABILITY."""
    if au in LATERAL_AUS and rng.random() < ONE_SIDED_PROBABILITY:
        return ("R" if rng.random() < 0.5 else "L") + au[2:]
    return au


def compatible_set(rng: np.random.Generator, count: int) -> list[str]:
    """Up to `count` distinct rendered AUs, no two from one EXCLUSIVE_GROUPS entry."""
    chosen: list[str] = []
    for au in rng.permutation(RENDERED_AUS):
        au = str(au)
        if not any(au in group and group.intersection(chosen) for group in EXCLUSIVE_GROUPS):
            chosen.append(au)
        if len(chosen) == count:
            break
    return chosen


def sample_intensities(rng: np.random.Generator) -> tuple[str, dict[str, float]]:
    """(kind, renderer intensities) of one corpus face; kinds and shares in FACE_KINDS."""
    kind = _draw_kind(rng, FACE_KINDS)
    intensities: dict[str, float] = {}
    if kind == "single":
        au = RENDERED_AUS[int(rng.integers(len(RENDERED_AUS)))]
        intensities[_with_side(au, rng)] = float(rng.uniform(*LABELLED_RANGE))
    elif kind == "random_set":
        for au in compatible_set(rng, int(rng.integers(2, 6))):
            intensities[_with_side(au, rng)] = float(rng.uniform(*LABELLED_RANGE))
    elif kind == "prototype":
        intensities = dict(expressions.sample_expression(rng).intensities)
    if rng.random() < TRACE_PROBABILITY:
        present = {expressions.labelled_aus({key: 1.0}, 0.5)[0] for key in intensities}
        for _ in range(1 + int(rng.random() < 0.4)):
            au = RENDERED_AUS[int(rng.integers(len(RENDERED_AUS)))]
            if au not in present:
                intensities[au] = float(rng.uniform(*expressions.TRACE_RANGE))
                present.add(au)
    return kind, intensities


@dataclasses.dataclass(frozen=True)
class CorpusFace:
    """One planned corpus face: what to render and its labels."""

    record_id: str
    kind: str
    intensities: dict[str, float]
    aus: tuple[str, ...]  # labelled AUs (intensity >= the demo's label threshold), numeric order
    identity_seed: int
    pose_seed: int
    image: str  # relative to the corpus image root


def plan_faces(split: str, count: int, seed: int) -> list[CorpusFace]:
    """The faces of one corpus split (labels and seeds; nothing rendered). Deterministic."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown corpus split {split!r}; splits: {', '.join(SPLIT_FILES)}")
    rng = np.random.default_rng([int(seed), _SPLIT_STREAMS[split]])
    threshold = expressions.ExpressionConfig().label_threshold
    faces = []
    for index in range(count):
        kind, intensities = sample_intensities(rng)
        record_id = f"perception-{split}-{index:06d}"
        faces.append(CorpusFace(
            record_id=record_id, kind=kind, intensities=intensities,
            aus=expressions.labelled_aus(intensities, threshold),
            identity_seed=IDENTITY_SEED_BASE + int(rng.integers(2**31)),
            pose_seed=int(rng.integers(2**31)),
            image=f"{split}/{index // 1000:03d}/{record_id}.jpg"))
    return faces


def face_record(face: CorpusFace) -> FEARecord:
    return FEARecord(
        id=face.record_id, dataset=DATASET, images=(face.image,), question="", aus=face.aus, labels=(),
        description="",
        meta_info={"generator": f"facialr1_jax.data.perception v{CORPUS_VERSION}", "kind": face.kind,
                   "intensities": {key: round(value, 4) for key, value in face.intensities.items()},
                   "identity_seed": face.identity_seed, "pose_seed": face.pose_seed})


# ------------------------------------------------------------------------------------ turns
def _one_sided(au: str, intensities: dict[str, float] | None) -> bool:
    """Whether `au` acts on one side only in `intensities` (renderer keys)."""
    if not intensities or au not in ONE_SIDED_CLAUSES:
        return False
    number = au[2:]
    return au not in intensities and ((f"R{number}" in intensities) != (f"L{number}" in intensities))


def describe(aus: Sequence[str], rng: np.random.Generator, intensities: dict[str, float] | None = None) -> str:
    """A sentence naming each AU's movement with its code, top of the face to bottom."""
    if not aus:
        return NO_AU_REPLIES[int(rng.integers(len(NO_AU_REPLIES)))]
    ordered = sorted(aus, key=lambda au: (reasoning.REGION_OF.get(au, 5), au_number(au)))
    clauses = []
    for au in ordered:
        options = ONE_SIDED_CLAUSES[au] if _one_sided(au, intensities) else AU_CLAUSES[au]
        # Many AUs: the shortest wording of each (the first), so the reply stays short.
        choice = 0 if len(ordered) > SHORT_WORDING_ABOVE else int(rng.integers(len(options)))
        clauses.append(f"{options[choice]} ({au})")
    text = "; ".join(clauses) + "."
    return text[0].upper() + text[1:]


def au_list(aus: Sequence[str]) -> str:
    return ", ".join(sorted(aus, key=au_number)) or NO_AU_LIST


def perception_turn(aus: Sequence[str], rng: np.random.Generator,
                    intensities: dict[str, float] | None = None) -> tuple[str, str, str]:
    """(kind, instruction, reply) of one training turn about a face with labelled `aus`."""
    kind = _draw_kind(rng, TURN_KINDS)
    if kind == "describe":
        instruction = DESCRIBE_INSTRUCTIONS[int(rng.integers(len(DESCRIBE_INSTRUCTIONS)))]
        return kind, instruction, describe(aus, rng, intensities)
    if kind == "list":
        return kind, LIST_INSTRUCTIONS[int(rng.integers(len(LIST_INSTRUCTIONS)))], au_list(aus)
    present = bool(aus) and rng.random() < 0.5
    if present:
        asked = aus[int(rng.integers(len(aus)))]
    else:
        absent = [au for au in RENDERED_AUS if au not in aus]
        asked = absent[int(rng.integers(len(absent)))]
    template = YES_NO_INSTRUCTIONS[int(rng.integers(len(YES_NO_INSTRUCTIONS)))]
    return kind, template.format(au=asked), "Yes." if present else "No."


# ------------------------------------------------------------------------------------ corpus on disk
@dataclasses.dataclass(frozen=True)
class CorpusPaths:
    root: Path
    train: Path
    eval: Path
    images: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> CorpusPaths:
        root = Path(root)
        return cls(root=root, train=root / SPLIT_FILES["train"], eval=root / SPLIT_FILES["eval"],
                   images=root / "images")


def corpus_parameters(*, num_train: int, num_eval: int, image_size: int, seed: int) -> dict[str, int]:
    parameters = {"num_train": num_train, "num_eval": num_eval, "image_size": image_size, "seed": seed,
                  "corpus_version": CORPUS_VERSION, "generator_version": demo.GENERATOR_VERSION}
    for name, value in parameters.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"perception corpus parameter {name} must be an integer >= 0, got {value!r}")
    return {name: int(value) for name, value in parameters.items()}


def build_corpus(out_dir: str | os.PathLike, *, num_train: int, num_eval: int, image_size: int = 112,
                 seed: int = 0, workers: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> CorpusPaths:
    """Render the corpus into `out_dir` (which must be empty or absent)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"build_corpus: {out} exists and is not empty")
    paths = CorpusPaths.at(out)
    plans = {"train": plan_faces("train", num_train, seed), "eval": plan_faces("eval", num_eval, seed)}
    faces = [face for split_faces in plans.values() for face in split_faces]
    for folder in sorted({os.path.dirname(face.image) for face in faces}):
        (paths.images / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(face.intensities, face.identity_seed, face.pose_seed, face.image) for face in faces]
    demo.render_jobs(jobs, paths.images, image_size, workers, progress)
    for split, split_faces in plans.items():
        write_jsonl([face_record(face) for face in split_faces], paths.root / SPLIT_FILES[split])
    return paths


def ensure_corpus(cache_dir: str | os.PathLike, *, num_train: int, num_eval: int, image_size: int = 112,
                  seed: int = 0, workers: int | None = None, progress: bool = True) -> CorpusPaths:
    """The corpus for these parameters under `cache_dir`, built on first use (written to a temporary
    sibling and renamed into place, so an interrupted build never leaves a half-written corpus)."""
    parameters = corpus_parameters(num_train=num_train, num_eval=num_eval, image_size=image_size, seed=seed)
    total = num_train + num_eval
    started = time.perf_counter()

    def report(done: int, count: int) -> None:
        if progress and (done == count or done % 4000 < 400):
            print(f"[perception corpus] rendered {done}/{count} faces ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)

    def build(staging: Path) -> None:
        if progress:
            print(f"[perception corpus] building {total} faces ...", file=sys.stderr, flush=True)
        build_corpus(staging, num_train=num_train, num_eval=num_eval, image_size=image_size, seed=seed,
                     workers=workers, progress=report)

    final = demo.build_once(cache_dir, "perception", parameters, build, what="ensure_corpus")
    return CorpusPaths.at(final)



# ------------------------------------------------------------------------------------ encoding
@dataclasses.dataclass(frozen=True)
class EncodePerception:
    """grain random map: corpus element -> TrainExample of one perception turn (drawn per example and
    epoch from the map's seed, so a resumed run sees the same turns)."""

    tokenizer: Any
    encoding: EncodingConfig

    def __call__(self, element: dict, rng: np.random.Generator) -> TrainExample:
        record = element["record"]
        _, instruction, reply = perception_turn(record.aus, rng, record.meta_info.get("intensities"))
        return encode_turn(record, self.tokenizer, self.encoding, instruction, reply,
                           images=element_images(element))


def predicted_aus(text: str) -> frozenset[str]:
    """The AU codes a reply names ("AU4", "AU12"), whatever its wording."""
    return frozenset(f"AU{int(number)}" for number in re.findall(r"\bAU\s?([0-9]{1,2})\b", text))

