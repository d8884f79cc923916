"""The built-in demo data set: synthetic FACS faces written as FEA-20K JSONL records.

    python -m facialr1_jax.data.demo --out DIR [--num_sft 300 --num_rl 4000 --num_test 500
                                               --image_size 112 --seed 0]

writes, in the exact FEA-20K schema (`fea.records`, docs/METHOD.md 2.1):

    DIR/stage1_sft.jsonl   records with `description` (the small stage 1 reasoning set)
    DIR/stage2_rl.jsonl    records with labels and no description, a mix like the real stage 2
                           sources: emotion + AU ("synthface"), AU-only ("synthface-AU", labels [])
                           and emotion-only ("synthface-emotion", AUs [])
    DIR/test.jsonl         held-out records with `description` (reference text for ROUGE-L)
    DIR/images/            the JPEG faces; the records' `image` paths are relative to this folder
    DIR/stats.json         class counts, record mix and the AU-set ceiling of the stage 2 split
    DIR/stamp.json         the parameters the set was built with (see `ensure_demo`)

Every record's `meta_info` keeps the generator's ground truth (emotion, AU intensities with sides,
identity and pose seeds, the FACS table row), so any face can be re-rendered or analysed; training
code ignores it (docs/METHOD.md 2.1).

Splits draw from independent random streams of one seed, and every face has its own identity, so
test faces are new people. `ensure_demo(cache_dir, ...)` reuses a finished build with the same
parameters and generator version; builds go to a temporary folder that is renamed into place, so
an interrupted or concurrent build never leaves a half-written set behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from facialr1_jax.data import expressions, reasoning, synthface
from facialr1_jax.fea.records import FEARecord, write_jsonl

# Bump when the renderer, the label sampler or the writer changes what a build contains, so cached
# builds made by older code are rebuilt instead of reused.
GENERATOR_VERSION = 2

SPLIT_FILES = {"sft": "stage1_sft.jsonl", "rl": "stage2_rl.jsonl", "test": "test.jsonl"}
DATASET_BOTH = "synthface"
DATASET_AU_ONLY = "synthface-AU"
DATASET_EMOTION_ONLY = "synthface-emotion"
# Stage 2 record mix: (emotion + AU, AU-only, emotion-only).
DEFAULT_RL_MIX = (0.5, 0.25, 0.25)

_SPLIT_STREAMS = {"sft": 1, "rl": 2, "test": 3}
_STAMP = "stamp.json"
_JPEG_QUALITY = 92

# Questions as they appear in source annotations: some empty (the prompt builder then uses its
# default question), some with the `<image>` placeholder the prompt builder strips.
EMOTION_QUESTIONS = (
    "",
    "",
    "<image>\nWhat emotion does this person show?",
    "Analyse the facial expression in the image and identify the emotion.",
    "<image>Which emotion is expressed by this face?",
)
AU_QUESTIONS = (
    "",
    "Which facial action units are active in this face, and what do they suggest?",
    "<image>\nDescribe the facial action units you can see.",
)


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where a built demo set lives. `paths["sft"]` etc. work as well as attributes."""

    root: Path
    sft: Path
    rl: Path
    test: Path
    images: Path  # the image root: record `image` paths are relative to it
    stats: Path

    def __getitem__(self, key: str) -> Path:
        if key not in {field.name for field in dataclasses.fields(self)}:
            raise KeyError(f"DemoPaths has no entry {key!r}; entries: root, sft, rl, test, images, stats")
        return getattr(self, key)

    @classmethod
    def at(cls, root: str | os.PathLike) -> DemoPaths:
        root = Path(root)
        return cls(
            root=root,
            sft=root / SPLIT_FILES["sft"],
            rl=root / SPLIT_FILES["rl"],
            test=root / SPLIT_FILES["test"],
            images=root / "images",
            stats=root / "stats.json",
        )


@dataclasses.dataclass(frozen=True)
class PlannedFace:
    """One record to generate: its labels and everything the renderer needs."""

    record_id: str
    split: str
    kind: str  # "both" | "au_only" | "emotion_only"
    expression: expressions.Expression
    identity_seed: int
    pose_seed: int
    image: str  # relative to the image root


def plan_split(
    split: str,
    count: int,
    seed: int,
    *,
    rl_mix: Sequence[float] = DEFAULT_RL_MIX,
    config: expressions.ExpressionConfig = expressions.ExpressionConfig(),
) -> list[PlannedFace]:
    """The faces of one split (labels and seeds only; nothing is rendered). Deterministic."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_FILES)}")
    _check_count(f"num_{split}", count)
    mix = _check_mix(rl_mix)
    rng = np.random.default_rng([int(seed), _SPLIT_STREAMS[split]])
    kinds = ("both", "au_only", "emotion_only")
    faces = []
    for index in range(count):
        expression = expressions.sample_expression(rng, config)
        kind = kinds[int(rng.choice(3, p=mix))] if split == "rl" else "both"
        record_id = f"synthface-{split}-{index:05d}"
        faces.append(
            PlannedFace(
                record_id=record_id,
                split=split,
                kind=kind,
                expression=expression,
                identity_seed=int(rng.integers(2**31)),
                pose_seed=int(rng.integers(2**31)),
                image=f"{split}/{record_id}.jpg",
            )
        )
    return faces


def face_record(face: PlannedFace, *, with_description: bool, image_size: int) -> FEARecord:
    """The FEA record of a planned face (the description is drawn from the face's own seeds)."""
    expression = face.expression
    aus = () if face.kind == "emotion_only" else expression.aus
    labels = () if face.kind == "au_only" else (expression.emotion,)
    question_rng = np.random.default_rng([face.identity_seed, face.pose_seed, 7])
    questions = AU_QUESTIONS if face.kind == "au_only" else EMOTION_QUESTIONS
    description = ""
    if with_description:
        description = reasoning.write_description(
            expression.emotion, expression.aus, question_rng, intensities=expression.intensities
        )
    dataset = {"both": DATASET_BOTH, "au_only": DATASET_AU_ONLY, "emotion_only": DATASET_EMOTION_ONLY}[face.kind]
    return FEARecord(
        id=face.record_id,
        dataset=dataset,
        images=(face.image,),
        question=questions[question_rng.integers(len(questions))],
        aus=aus,
        labels=labels,
        description=description,
        meta_info={
            "generator": f"facialr1_jax.data.synthface v{GENERATOR_VERSION}",
            "emotion": expression.emotion,
            "true_aus": list(expression.aus),
            "intensities": {key: round(value, 4) for key, value in expression.intensities.items()},
            "source": expression.source,
            "identity_seed": face.identity_seed,
            "pose_seed": face.pose_seed,
            "image_size": image_size,
        },
    )


def build_demo(
    out_dir: str | os.PathLike,
    *,
    num_sft: int = 300,
    num_rl: int = 4000,
    num_test: int = 500,
    image_size: int = 112,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> DemoPaths:
    """Generate the demo set into `out_dir` (created; must be empty if it exists).

    workers: render processes (None = one per CPU core, at most 4; 0 = render in this process).
    progress: True prints "rendered i/n" lines to stderr; a callable receives (done, total).
    """
    _check_count("image_size", image_size, minimum=16)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"build_demo: {out} exists and is not empty")
    paths = DemoPaths.at(out)
    plans = {
        "sft": plan_split("sft", num_sft, seed),
        "rl": plan_split("rl", num_rl, seed),
        "test": plan_split("test", num_test, seed),
    }
    for split in plans:
        (paths.images / split).mkdir(parents=True, exist_ok=True)

    faces = [face for split_faces in plans.values() for face in split_faces]
    _render_all(faces, paths.images, image_size, workers, _progress_callback(progress))

    for split, split_faces in plans.items():
        with_description = split != "rl"
        records = [face_record(face, with_description=with_description, image_size=image_size) for face in split_faces]
        write_jsonl(records, paths[split])
    paths.stats.write_text(json.dumps(split_statistics(plans), indent=2) + "\n", encoding="utf-8")
    return paths


def split_statistics(plans: dict[str, list[PlannedFace]]) -> dict[str, Any]:
    """Per split: record count, emotions, record kinds, mean labelled AUs; for stage 2 also the
    best emotion accuracy reachable from the true AU sets alone (`expressions.au_set_ceiling`)."""
    stats: dict[str, Any] = {"generator_version": GENERATOR_VERSION}
    for split, faces in plans.items():
        entry: dict[str, Any] = {
            "records": len(faces),
            "emotions": dict(Counter(face.expression.emotion for face in faces).most_common()),
            "kinds": dict(Counter(face.kind for face in faces).most_common()),
            "mean_labelled_aus": round(float(np.mean([len(face.expression.aus) for face in faces])), 3)
            if faces else 0.0,
        }
        if faces:
            entry["au_set_ceiling"] = round(
                expressions.au_set_ceiling((face.expression.emotion, face.expression.aus) for face in faces), 4
            )
        stats[split] = entry
    return stats


def demo_parameters(
    *, num_sft: int = 300, num_rl: int = 4000, num_test: int = 500, image_size: int = 112, seed: int = 0
) -> dict[str, int]:
    """The parameters that identify a build (what `ensure_demo` compares with the stamp)."""
    parameters = {
        "num_sft": num_sft, "num_rl": num_rl, "num_test": num_test, "image_size": image_size,
        "seed": seed, "generator_version": GENERATOR_VERSION,
    }  # fmt: skip
    for name, value in parameters.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"demo parameter {name} must be an integer, got {value!r}")
    return {name: int(value) for name, value in parameters.items()}


def ensure_demo(
    cache_dir: str | os.PathLike,
    *,
    num_sft: int = 300,
    num_rl: int = 4000,
    num_test: int = 500,
    image_size: int = 112,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> DemoPaths:
    """The demo set for these parameters under `cache_dir`, built on first use.

    Each parameter set gets its own folder `cache_dir/synthface-<hash>` holding `stamp.json`;
    a folder whose stamp matches is returned as is. A build is written to a temporary sibling and
    renamed into place, so readers only ever see complete sets; when two processes build the same
    set at once, the first rename wins and the other's copy is discarded.
    """
    parameters = demo_parameters(
        num_sft=num_sft, num_rl=num_rl, num_test=num_test, image_size=image_size, seed=seed
    )
    def build(staging: Path) -> None:
        if progress is True:
            print("[demo] building the built-in data set ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        build_demo(
            staging, num_sft=num_sft, num_rl=num_rl, num_test=num_test, image_size=image_size,
            seed=seed, workers=workers, progress=progress,
        )  # fmt: skip
        if progress is True:
            print(f"[demo] done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    final = build_once(cache_dir, "synthface", parameters, build, what="ensure_demo")
    return DemoPaths.at(final)


def build_once(cache_dir: str | os.PathLike, prefix: str, parameters: dict[str, int],
               build: Callable[[Path], None], *, what: str) -> Path:
    """The folder `cache_dir/<prefix>-<hash of parameters>`, built by `build(staging_folder)` on first use.

    A folder whose stamp.json equals `parameters` is returned as is. A build is written to a temporary
    sibling and renamed into place, so readers only ever see complete folders; when two processes build
    the same folder at once, the first rename wins and the other's copy is discarded. A folder of that
    name without a matching stamp (older code, or by hand) is an error naming it.
    """
    cache = Path(cache_dir)
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    final = cache / f"{prefix}-{digest}"
    if _stamp_matches(final, parameters):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(
            f"{what}: {final} exists but its {_STAMP} does not match {parameters}; delete the folder to rebuild")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache))
    try:
        build(staging)
        (staging / _STAMP).write_text(json.dumps(parameters, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, final)
        except OSError:
            if not _stamp_matches(final, parameters):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _stamp_matches(folder: Path, parameters: dict[str, int]) -> bool:
    stamp = folder / _STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == parameters
    except (OSError, json.JSONDecodeError):
        return False


# ------------------------------------------------------------------------------------ rendering
def _render_chunk(jobs: list[tuple[dict[str, float], int, int, str]], image_root: str, image_size: int) -> int:
    """Render and save one chunk of faces (runs in a worker process)."""
    for intensities, identity_seed, pose_seed, relative in jobs:
        image = synthface.render(intensities, identity_seed, image_size, pose_seed=pose_seed)
        image.save(os.path.join(image_root, relative), format="JPEG", quality=_JPEG_QUALITY)
    return len(jobs)


def _render_all(
    faces: list[PlannedFace],
    image_root: Path,
    image_size: int,
    workers: int | None,
    report: Callable[[int, int], None] | None,
) -> None:
    jobs = [(face.expression.intensities, face.identity_seed, face.pose_seed, face.image) for face in faces]
    render_jobs(jobs, image_root, image_size, workers, report)


def render_jobs(
    jobs: Sequence[tuple[dict[str, float], int, int, str]],
    image_root: str | os.PathLike,
    image_size: int,
    workers: int | None,
    report: Callable[[int, int], None] | None = None,
) -> None:
    """Renders (intensities, identity seed, pose seed, relative path) faces as JPEGs under `image_root`
    (folders must exist); workers as in `build_demo`; `report(done, total)` after each chunk."""
    jobs = list(jobs)
    total = len(jobs)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers <= 1 or total < 200:
        done = 0
        for start in range(0, total, 100):
            done += _render_chunk(jobs[start : start + 100], str(image_root), image_size)
            if report:
                report(done, total)
        return
    chunk = max(50, min(400, total // (workers * 4) or 1))
    # "spawn": the parent may already run JAX threads, and forking a threaded process is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_render_chunk, jobs[start : start + chunk], str(image_root), image_size)
            for start in range(0, total, chunk)
        ]
        done = 0
        for future in futures:
            done += future.result()
            if report:
                report(done, total)


def _render_arrays(jobs: list[tuple[dict[str, float], int, int]], image_size: int) -> np.ndarray:
    """Render one chunk of faces to a uint8 array (runs in a worker process)."""
    out = np.empty((len(jobs), image_size, image_size, 3), dtype=np.uint8)
    for index, (intensities, identity_seed, pose_seed) in enumerate(jobs):
        out[index] = np.asarray(synthface.render(intensities, identity_seed, image_size, pose_seed=pose_seed))
    return out


def render_faces(faces: Sequence[PlannedFace], image_size: int = 112, *, workers: int | None = None) -> np.ndarray:
    """The planned faces as one (N, size, size, 3) uint8 array, rendered in memory (no files):
    for probes and benchmarks that want pixels without a build. Same pixels as the JPEG-free
    render of each face; workers as in `build_demo`."""
    jobs = [(face.expression.intensities, face.identity_seed, face.pose_seed) for face in faces]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    chunk = 250
    if workers <= 1 or len(jobs) <= chunk:
        return _render_arrays(jobs, image_size) if jobs else np.empty((0, image_size, image_size, 3), np.uint8)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = list(pool.map(_render_arrays, [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)],
                              [image_size] * (-(-len(jobs) // chunk))))
    return np.concatenate(parts)


def _progress_callback(progress: bool | Callable[[int, int], None]) -> Callable[[int, int], None] | None:
    if callable(progress):
        return progress
    if not progress:
        return None
    started = time.perf_counter()
    last_tenth = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last_tenth[0] or done == total:
            last_tenth[0] = tenth
            elapsed = time.perf_counter() - started
            print(f"[demo] rendered {done}/{total} faces ({elapsed:.1f} s)", file=sys.stderr, flush=True)

    return report


def _check_count(name: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_mix(mix: Sequence[float]) -> np.ndarray:
    weights = np.asarray(mix, dtype=np.float64)
    if weights.shape != (3,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"rl_mix must be three weights >= 0 (both, AU-only, emotion-only), got {mix!r}")
    return weights / weights.sum()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m facialr1_jax.data.demo")
    parser.add_argument("--out", required=True, help="output folder (created; must be empty)")
    parser.add_argument("--num_sft", type=int, default=300, help="stage 1 records with reasoning")
    parser.add_argument("--num_rl", type=int, default=4000, help="stage 2 records with labels only")
    parser.add_argument("--num_test", type=int, default=500, help="held-out records with reasoning")
    parser.add_argument("--image_size", type=int, default=112, help="side of the faces in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: one per core, max 4)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = build_demo(
        args.out, num_sft=args.num_sft, num_rl=args.num_rl, num_test=args.num_test,
        image_size=args.image_size, seed=args.seed, workers=args.workers, progress=True,
    )  # fmt: skip
    stats = json.loads(paths.stats.read_text(encoding="utf-8"))
    print(json.dumps({"out": str(paths.root), "seconds": round(time.perf_counter() - started, 1), **stats}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
