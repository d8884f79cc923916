"""Validates an FEA data set exactly as training reads it, and reports every problem.

    python launch/check_data.py --jsonl=train.jsonl --image_root=images/ [--on_error=skip|raise]
        [--report=PATH] [--min_pixels=N --max_pixels=N --max_image_pixels=N] [--threads=N]

Every record is validated (JSON, fields, emotion and AU codes, the label against its dataset's
vocabulary, the image path inside the image root) and every image is decoded, resized and
patchified. Prints a summary (counts per dataset and label, problems by kind, the first problems)
and writes a JSON report of every problem (file, line, field, kind, reason).

Exit status: 0 when the data is usable under the policy; 1 when any row is bad under
--on_error=raise (the default); 2 for bad flags or an unreadable file or folder.
"""

import os
import sys

# Make the package importable when this file is run as a script from a checkout.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from facialr1_jax import launch_support  # noqa: E402
from facialr1_jax.data import images, sources  # noqa: E402

_JSONL = flags.DEFINE_string("jsonl", None, "FEA JSONL annotation file to check.")
_IMAGE_ROOT = flags.DEFINE_string("image_root", None, "Folder the JSONL image paths are relative to.")
_ON_ERROR = flags.DEFINE_enum(
    "on_error", "raise", ["raise", "skip"],
    "raise: any bad row fails the check (exit 1); skip: bad rows are counted and reported, and "
    "the check passes as long as the file and folder can be read.")
_REPORT = flags.DEFINE_string(
    "report", None, "Where the JSON report goes (default: ./<jsonl name>.check.json).")
_MIN_PIXELS = flags.DEFINE_integer(
    "min_pixels", images.DEFAULT_MIN_PIXELS, "Smallest resized image area, as the training config.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", images.DEFAULT_MAX_PIXELS, "Largest resized image area, as the training config.")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", images.DEFAULT_MAX_IMAGE_PIXELS,
    "Decompression-bomb guard: images with more source pixels than this are problems.")
_STRICT_LABELS = flags.DEFINE_boolean(
    "strict_labels", True, "Reject labels outside the eight emotions (else keep them cleaned).")
_THREADS = flags.DEFINE_integer("threads", None, "Image-checking threads (default: one per CPU).")


def main(argv):
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    if not _JSONL.value or not _IMAGE_ROOT.value:
        launch_support.fail("--jsonl and --image_root are required")
    if not os.path.isfile(_JSONL.value):
        launch_support.fail(f"--jsonl={_JSONL.value}: no such file")
    if not os.path.isdir(_IMAGE_ROOT.value):
        launch_support.fail(f"--image_root={_IMAGE_ROOT.value}: no such folder")
    try:
        config = images.ImageConfig(min_pixels=_MIN_PIXELS.value, max_pixels=_MAX_PIXELS.value,
                                    max_image_pixels=_MAX_IMAGE_PIXELS.value)
    except ValueError as error:
        launch_support.fail(f"flag error: {error}")
    report = _REPORT.value or os.path.splitext(os.path.basename(_JSONL.value))[0] + ".check.json"

    check = sources.check_fea_data(
        _JSONL.value, _IMAGE_ROOT.value, on_error=_ON_ERROR.value, report_path=report,
        image_config=config, strict_labels=_STRICT_LABELS.value, num_threads=_THREADS.value)
    print(check.summary_text())
    sys.exit(0 if check.ok else 1)


if __name__ == "__main__":
    app.run(main, flags_parser=launch_support.parse_flags_or_fail)
