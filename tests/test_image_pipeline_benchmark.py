"""benchmarks/image_pipeline.py end to end at toy size: the bit-for-bit check passes, every
pipeline is timed, and the JSON carries the per-kind stage breakdown and the decode+resize bound.

Run as a subprocess: the script defines absl flags at import, which must not meet other scripts'
flags in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                       "image_pipeline.py")


def test_image_pipeline_benchmark_reports_stages_and_the_exact_bound():
    kinds = ["fer2013", "rafdb", "affectnet"]
    completed = subprocess.run(
        [sys.executable, _SCRIPT, f"--kinds={','.join(kinds)}", "--images_per_kind=2",
         "--repeats=1", "--passes=1", "--workers=0"],
        capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert "outputs equal bit for bit" in lines[0]
    result = json.loads(lines[-1])

    assert result["images"] == 6 and result["kinds"] == kinds
    for name in ("ours", "hf", "ours_jpeg_draft", "decode_resize_only"):
        assert result[f"{name}_images_per_s"] > 0, name
    # Ratios of the unrounded rates; the printed rates are rounded to 0.01 images/s.
    hf = result["hf_images_per_s"]
    for ratio, rate in (("speedup_vs_hf", "ours"), ("speedup_bound_vs_hf", "decode_resize_only")):
        assert abs(result[ratio] - result[f"{rate}_images_per_s"] / hf) < 2e-3 * result[ratio], ratio

    assert list(result["per_kind_single_process"]) == kinds
    for kind, numbers in result["per_kind_single_process"].items():
        stages = numbers["ours_stages_cpu_ms"]
        assert set(stages) == {"decode", "convert_resize", "normalise_patchify"}, kind
        assert all(ms > 0 for ms in stages.values()), (kind, stages)
        total = sum(stages.values())
        share = (stages["decode"] + stages["convert_resize"]) / total
        # The stage times are printed rounded to 0.001 ms (each off by up to 5e-4 ms) and the share to
        # 0.001: for a 48 x 48 image whose stages take ~0.15 ms in all, that alone moves the share by ~0.01.
        rounding = 5e-4 + (2 * 5e-4 + share * 3 * 5e-4) / total
        assert abs(numbers["decode_resize_share"] - share) <= rounding + 1e-9, (kind, numbers, share, rounding)
    # fer2013 (48 x 48 -> 56 x 56) is upscaled, affectnet (480 x 480 -> 448 x 448) downscaled:
    # both are resized, so resizing a 200k-pixel image must cost more than a 3k-pixel one.
    per_kind = result["per_kind_single_process"]
    assert (per_kind["affectnet"]["ours_stages_cpu_ms"]["convert_resize"]
            > per_kind["fer2013"]["ours_stages_cpu_ms"]["convert_resize"])
