"""Analyses face photographs with a trained model: one JSON object per image on stdout.

    python launch/infer.py --checkpoint=workdirs/grpo --image=face.jpg [--image=other.png ...]

Each line holds: image, emotion (canonical noun, or null when the answer names none), answer (the
answer as written), aus (the AUs named in the reasoning), au_names, reasoning, format_valid and raw
(the whole generated text). --checkpoint takes a training workdir (its latest checkpoint), a step
folder or a Hugging Face folder. Every image is opened before the model is loaded, so a missing,
unreadable or non-image file ends the run at once with one line on stderr naming the file.
"""

import json
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from facialr1_jax import launch_support  # noqa: E402

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir (its latest checkpoint), a step folder or a Hugging Face folder."
)
_IMAGES = flags.DEFINE_multi_string("image", [], "A face image file; repeat the flag for several images.")
_QUESTION = flags.DEFINE_string("question", "", "The question asked about each image (\"\" = the default question).")
_LABELS = flags.DEFINE_list("labels", [], "The emotions the answer may name (default: all eight).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 0, "Generation length (0 = the model's setting).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images analysed together in one generation batch.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the checkpoint's).")


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # stdout is the JSON; keep stderr for problems
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not _CHECKPOINT.value:
        launch_support.fail("--checkpoint is required (a training workdir, a step folder or a Hugging Face folder)")
    if not os.path.exists(_CHECKPOINT.value):
        launch_support.fail(f"--checkpoint={_CHECKPOINT.value}: no such file or folder")
    if not _IMAGES.value:
        launch_support.fail("give at least one --image=PATH")
    if _MAX_NEW_TOKENS.value < 0 or _BATCH_SIZE.value < 1:
        launch_support.fail("--max_new_tokens must be >= 0 and --batch_size >= 1")

    from facialr1_jax.data import images as image_lib
    from facialr1_jax.fea.emotions import try_normalize_emotion

    labels = []
    for label in _LABELS.value:
        canonical = try_normalize_emotion(label)
        if canonical is None:
            launch_support.fail(f"--labels: {label!r} is not an emotion")
        labels.append(canonical)

    # Decode everything first: a bad file should cost a second, not a model load.
    pictures = []
    for path in _IMAGES.value:
        try:
            pictures.append(image_lib.load_image(path))
        except image_lib.ImageLoadError as error:
            launch_support.fail(f"--image={path}: {error.reason}")

    from facialr1_jax.api import FacialR1

    try:
        analyser = FacialR1.load(_CHECKPOINT.value, dtype=_DTYPE.value)
    except (FileNotFoundError, ValueError) as error:
        launch_support.fail(f"--checkpoint={_CHECKPOINT.value}: {error}")
    results = analyser.analyze_batch(
        pictures,
        question=_QUESTION.value or None,
        labels=labels or None,
        max_new_tokens=_MAX_NEW_TOKENS.value or None,
        batch_size=_BATCH_SIZE.value,
    )
    for path, result in zip(_IMAGES.value, results):
        print(json.dumps({"image": path, **result}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=launch_support.parse_flags_or_fail)
