"""Image pipeline throughput: ours against transformers' Qwen2VLImageProcessorPil.

    python benchmarks/image_pipeline.py [--workers=2] [--images_per_kind=24] [--repeats=3]
        [--max_pixels=200704] [--kinds=fer2013,rafdb,...] [--image_dir=DIR]

Both pipelines get the same encoded image files and the same grain pipeline
(`MapDataset.source(paths).map(fn).to_iter_dataset().mp_prefetch(workers)`), so they use the same
worker processes on the same cores; only `fn` differs:
  ours:       facialr1_jax.data.images.preprocess(path)   (decode, resize, normalise, patchify)
  reference:  Qwen2VLImageProcessorPil()(images=PIL.Image.open(path), return_tensors="np")
Before timing, every image's output is compared: the two must be equal bit for bit.

The default images imitate the native files of FEA-20K's source datasets (generated, smooth
content plus noise so JPEG sizes are realistic): FER2013 48x48 grayscale PNG, RAF-DB aligned
100x100 JPEG, FABA / RAF-AU face crops 256x256 JPEG, AffectNet crops 480x480 JPEG, DISFA video
frames 1024x768 JPEG, BP4D frames 1040x1392 JPEG. `--image_dir` times real files instead.

With --jpeg_draft (on by default) a third pipeline times ours with `jpeg_draft=True`: large
JPEGs decoded at reduced DCT scale, same grid, pixels close to but not equal to the reference.
Its speed-up is reported beside the headline, which is the bit-exact mode.

With --bound (on by default) a fourth pipeline only decodes and resizes (`open_image` +
`resize_for_model`, the steps every bit-exact implementation shares with the reference: Pillow's
decoder and Pillow's bicubic resize define the reference's pixels) and hands back an unfilled
float32 array of the output's shape, so the worker -> main transfer is the same.
`speedup_bound_vs_hf` is therefore an upper bound on `speedup_vs_hf` for any exact pipeline that
decodes and resizes with Pillow and hands float32 patches across, however cheap its normalise and
patchify (only a smaller payload, e.g. uint8 patches normalised by the consumer, could pass it).

Timing: each worker handles one image at a time. A run starts the workers, makes one warm-up
pass over the images, then times `--passes` passes; each pipeline runs `--repeats` times,
alternating, and its best run counts (the machine may be shared). Single-process latencies per
kind are printed too, with where our time goes: CPU milliseconds of this thread (robust to other
processes on the machine) for decode (read + decode + EXIF orientation), convert + resize, and
normalise + patchify (to float32 patches), and the share of decode + resize in their sum. The
last line printed is one JSON object; `speedup_vs_hf` = our images/s / the reference's images/s
through the grain pipeline.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import tempfile
import time

# Make the package importable when this file is run as a script from a checkout.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes (both pipelines).")
_PER_KIND = flags.DEFINE_integer("images_per_kind", 24, "Generated images of each kind.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per pipeline (best counts).")
_PASSES = flags.DEFINE_integer("passes", 2, "Passes over the images in one timed run.")
_MIN_PIXELS = flags.DEFINE_integer("min_pixels", 56 * 56, "Smallest resized area.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", 448 * 448, "Largest resized area (448*448 as configs/grpo.py real runs).")
_KINDS = flags.DEFINE_list("kinds", None, "Kinds of generated image to use (default: all).")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "Time these image files instead.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the generated images.")
_JPEG_DRAFT = flags.DEFINE_boolean(
    "jpeg_draft", True, "Also time ours with jpeg_draft=True (reduced-scale JPEG decoding; same "
    "grid, pixels close but not equal to the reference). The headline stays the exact mode.")
_BOUND = flags.DEFINE_boolean(
    "bound", True, "Also time a pipeline that only decodes and resizes (the work every exact "
    "implementation shares with the reference): an upper bound on the exact speed-up.")

# kind -> (width, height, format, mode): the native files of the FEA-20K sources.
IMAGE_KINDS = {
    "fer2013": (48, 48, "PNG", "L"),
    "rafdb": (100, 100, "JPEG", "RGB"),
    "faba": (256, 256, "JPEG", "RGB"),
    "rafau": (256, 256, "JPEG", "RGB"),
    "affectnet": (480, 480, "JPEG", "RGB"),
    "disfa": (1024, 768, "JPEG", "RGB"),
    "bp4d": (1040, 1392, "JPEG", "RGB"),
}


def _generate(kind: str, index: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    width, height, fmt, mode = IMAGE_KINDS[kind]
    rng = np.random.default_rng([seed, index, len(kind)])
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = np.clip(smooth.astype(np.int16) + rng.integers(-6, 7, smooth.shape), 0, 255)
    picture = Image.fromarray(noisy.astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# The per-image functions run in grain worker processes: top-level, picklable (functools.partial
# of a module function), and importing their libraries on first use inside the worker.


def ours(path: str, *, min_pixels: int, max_pixels: int, jpeg_draft: bool = False):
    from facialr1_jax.data import images

    return images.preprocess(path, min_pixels=min_pixels, max_pixels=max_pixels,
                             jpeg_draft=jpeg_draft)


def decode_resize_only(path: str, *, min_pixels: int, max_pixels: int):
    """Ours without normalise/patchify: an unfilled float32 array of the output's shape."""
    import numpy as np

    from facialr1_jax.data import images

    config = images.ImageConfig(min_pixels=min_pixels, max_pixels=max_pixels)
    decoded = images.open_image(path)
    images.resize_for_model(decoded, *config.resized_size(decoded.height, decoded.width))
    grid = np.array(config.grid_thw(decoded.height, decoded.width), np.int64)
    return np.empty((grid[1] * grid[2], config.patch_dim), np.float32), grid


def ours_stages_ms(paths, *, min_pixels: int, max_pixels: int, repeats: int) -> dict[str, float]:
    """Where `ours` spends its time: best mean CPU ms of this thread per stage, as `preprocess`
    runs them (decode = read + decode + EXIF orientation)."""
    import numpy as np

    from facialr1_jax.data import images

    config = images.ImageConfig(min_pixels=min_pixels, max_pixels=max_pixels)
    best = {"decode": float("inf"), "convert_resize": float("inf"),
            "normalise_patchify": float("inf")}
    for _ in range(repeats):
        spent = dict.fromkeys(best, 0.0)
        for path in paths:
            start = time.thread_time()
            decoded = images.open_image(path)
            decoded_at = time.thread_time()
            resized = images.resize_for_model(decoded, *config.resized_size(decoded.height, decoded.width))
            resized_at = time.thread_time()
            images.normalise_and_patchify(np.asarray(resized))
            spent["decode"] += decoded_at - start
            spent["convert_resize"] += resized_at - decoded_at
            spent["normalise_patchify"] += time.thread_time() - resized_at
        for stage, seconds in spent.items():
            best[stage] = min(best[stage], seconds / len(paths) * 1e3)
    return best


@functools.lru_cache(maxsize=4)
def _reference_processor(min_pixels: int, max_pixels: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def reference(path: str, *, min_pixels: int, max_pixels: int):
    from PIL import Image

    out = _reference_processor(min_pixels, max_pixels)(images=Image.open(path),
                                                       return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"][0]


def _pipeline(fn, paths, workers: int):
    import grain

    # One image at a time per worker process (grain's default reads with 16 threads and a
    # 500-element buffer, which would hide the work inside the buffer and blur "same cores").
    read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    dataset = grain.MapDataset.source(paths).map(fn).to_iter_dataset(read_options)
    if workers > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return dataset


def _steady_rate(fn, paths, workers: int, passes: int) -> float:
    """Images/s through a started pipeline: one warm-up pass over the images (worker start-up,
    imports), then `passes` timed passes over the same images."""
    iterator = iter(_pipeline(fn, list(paths) * (passes + 1), workers))
    for _ in range(len(paths)):
        next(iterator)
    start = time.perf_counter()
    for _ in range(len(paths) * passes):
        next(iterator)
    rate = len(paths) * passes / (time.perf_counter() - start)
    del iterator
    return rate


def _latency_ms(fn, paths, repeats: int) -> float:
    """Best mean milliseconds per image in this process (one core, no pipeline)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best * 1e3


def main(argv):
    del argv
    import numpy as np

    bounds = dict(min_pixels=_MIN_PIXELS.value, max_pixels=_MAX_PIXELS.value)
    ours_fn = functools.partial(ours, **bounds)
    reference_fn = functools.partial(reference, **bounds)
    draft_fn = functools.partial(ours, jpeg_draft=True, **bounds)
    bound_fn = functools.partial(decode_resize_only, **bounds)

    with tempfile.TemporaryDirectory(prefix="image_pipeline_") as scratch:
        if _IMAGE_DIR.value:
            by_kind = {"files": sorted(
                os.path.join(folder, name)
                for folder, _, names in os.walk(_IMAGE_DIR.value) for name in names)}
        else:
            kinds = _KINDS.value or list(IMAGE_KINDS)
            unknown = sorted(set(kinds) - set(IMAGE_KINDS))
            if unknown:
                raise app.UsageError(f"unknown kinds {unknown}; known: {list(IMAGE_KINDS)}")
            by_kind = {}
            for kind in kinds:
                by_kind[kind] = []
                for index in range(_PER_KIND.value):
                    path = os.path.join(scratch, f"{kind}-{index:03d}")
                    with open(path, "wb") as stream:
                        stream.write(_generate(kind, index, _SEED.value))
                    by_kind[kind].append(path)
        paths = [path for kind_paths in by_kind.values() for path in kind_paths]

        for path in paths:
            got_pixels, got_grid = ours_fn(path)
            want_pixels, want_grid = reference_fn(path)
            if not (np.array_equal(got_grid, want_grid) and np.array_equal(got_pixels, want_pixels)):
                raise SystemExit(f"outputs differ on {path}: the benchmark would be meaningless")
            if not np.array_equal(draft_fn(path)[1], want_grid):
                raise SystemExit(f"jpeg_draft changed the grid of {path}")
            bound_pixels, bound_grid = bound_fn(path)
            if bound_pixels.shape != want_pixels.shape or not np.array_equal(bound_grid, want_grid):
                raise SystemExit(f"the decode+resize bound has another output shape on {path}")
        print(f"{len(paths)} images, outputs equal bit for bit; {_WORKERS.value} grain workers, "
              f"{os.cpu_count()} CPUs, pixels in [{bounds['min_pixels']}, {bounds['max_pixels']}]")

        per_kind = {}
        for kind, kind_paths in by_kind.items():
            ours_ms = _latency_ms(ours_fn, kind_paths, _REPEATS.value)
            reference_ms = _latency_ms(reference_fn, kind_paths, _REPEATS.value)
            stages = ours_stages_ms(kind_paths, repeats=_REPEATS.value, **bounds)
            shared = (stages["decode"] + stages["convert_resize"]) / sum(stages.values())
            per_kind[kind] = {"ours_ms": round(ours_ms, 3), "hf_ms": round(reference_ms, 3),
                              "speedup": round(reference_ms / ours_ms, 2),
                              "ours_stages_cpu_ms": {stage: round(ms, 3)
                                                     for stage, ms in stages.items()},
                              "decode_resize_share": round(shared, 3)}
            print(f"  one process, {kind:>10}: ours {ours_ms:7.2f} ms/image, reference "
                  f"{reference_ms:7.2f} ms/image, x{reference_ms / ours_ms:.2f}; ours CPU: "
                  + ", ".join(f"{stage} {ms:.2f}" for stage, ms in stages.items())
                  + f" ms ({shared:.0%} decode + resize)")

        pipelines = {"ours": ours_fn, "hf": reference_fn}
        if _JPEG_DRAFT.value:
            pipelines["ours_jpeg_draft"] = draft_fn
        if _BOUND.value:
            pipelines["decode_resize_only"] = bound_fn
        rates = dict.fromkeys(pipelines, 0.0)
        for _ in range(_REPEATS.value):  # alternate, so load from other processes hits all
            for name, fn in pipelines.items():
                rates[name] = max(rates[name],
                                  _steady_rate(fn, paths, _WORKERS.value, _PASSES.value))
        ours_rate, reference_rate = rates["ours"], rates["hf"]
        print("grain pipeline: " + ", ".join(f"{name} {rate:.1f} images/s"
                                             for name, rate in rates.items()))

    print(json.dumps({
        "benchmark": "image_pipeline",
        "images": len(paths),
        "kinds": list(by_kind),
        "workers": _WORKERS.value,
        "passes": _PASSES.value,
        "cpus": os.cpu_count(),
        "min_pixels": bounds["min_pixels"],
        "max_pixels": bounds["max_pixels"],
        "ours_images_per_s": round(ours_rate, 2),
        "hf_images_per_s": round(reference_rate, 2),
        "per_kind_single_process": per_kind,
        **({"ours_jpeg_draft_images_per_s": round(rates["ours_jpeg_draft"], 2),
            "speedup_vs_hf_jpeg_draft": round(rates["ours_jpeg_draft"] / reference_rate, 3)}
           if _JPEG_DRAFT.value else {}),
        **({"decode_resize_only_images_per_s": round(rates["decode_resize_only"], 2),
            "speedup_bound_vs_hf": round(rates["decode_resize_only"] / reference_rate, 3)}
           if _BOUND.value else {}),
        "speedup_vs_hf": round(ours_rate / reference_rate, 3),
    }))


if __name__ == "__main__":
    app.run(main)
