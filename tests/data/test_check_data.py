"""launch/check_data.py and the library check behind it (data.sources.check_fea_data)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facialr1_jax.data import images as image_lib
from facialr1_jax.data import sources

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch" / "check_data.py"


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize(size)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG")
    return buffer.getvalue()


def _row(record_id, dataset, image, labels, aus):
    return {"id": record_id, "dataset": dataset, "image": image, "AUs": aus, "labels": labels,
            "question": "", "description": ""}


def _data_set(tmp_path: Path, *, bad: bool) -> tuple[Path, Path]:
    root = tmp_path / "images"
    root.mkdir()
    for index in range(4):
        (root / f"face{index}.jpg").write_bytes(_jpeg(index))
    rows = [
        _row("r1", "RAF-DB", "face0.jpg", ["happy"], ["AU6", "AU12"]),
        _row("r2", "RAF-DB", "face1.jpg", ["sad"], ["AU1", "AU15"]),
        _row("a1", "AffectNet", "face2.jpg", ["contempt"], []),
        _row("d1", "DISFA", "face3.jpg", [], ["AU1", "AU2"]),
    ]
    lines = [json.dumps(row) for row in rows]
    if bad:
        (root / "cut.jpg").write_bytes(_jpeg(9, (300, 200))[:500])
        lines += [
            json.dumps(_row("b1", "RAF-DB", "missing.jpg", ["happy"], [])),
            json.dumps(_row("b2", "RAF-DB", "cut.jpg", ["happy"], [])),
            json.dumps(_row("b3", "FER2013", "face0.jpg", ["bemused"], [])),
            '{"id": "b4", ',
        ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl, root


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(LAUNCHER), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_clean_data_passes_with_a_summary_and_an_empty_report(tmp_path):
    jsonl, root = _data_set(tmp_path, bad=False)
    proc = _run(f"--jsonl={jsonl}", f"--image_root={root}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "usable records: 4; bad rows: 0" in proc.stdout
    assert "per dataset: RAF-DB 2, AffectNet 1, DISFA 1" in proc.stdout
    assert "happiness 1" in proc.stdout and "contempt 1" in proc.stdout
    assert "(none) 1" in proc.stdout
    assert proc.stdout.strip().endswith("result: OK")
    report = json.loads((tmp_path / "train.check.json").read_text())  # the default location
    assert report["problems"] == [] and report["ok"] is True
    assert report["per_dataset"] == {"RAF-DB": 2, "AffectNet": 1, "DISFA": 1}


def test_bad_rows_fail_under_raise_and_every_problem_is_reported(tmp_path):
    jsonl, root = _data_set(tmp_path, bad=True)
    report_path = tmp_path / "out" / "problems.json"
    proc = _run(f"--jsonl={jsonl}", f"--image_root={root}", f"--report={report_path}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "bad rows: 4" in proc.stdout and "FAILED" in proc.stdout
    assert f"{jsonl}:5: field 'image'" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    found = [(p["file"], p["line"], p["field"], p["kind"]) for p in report["problems"]]
    assert found == [
        (str(jsonl), 5, "image", "image:missing"),
        (str(jsonl), 6, "image", "image:truncated"),
        (str(jsonl), 7, "labels", "labels"),
        (str(jsonl), 8, None, "row"),
    ]
    assert all(p["reason"] for p in report["problems"])


def test_bad_rows_are_counted_not_fatal_under_skip(tmp_path):
    jsonl, root = _data_set(tmp_path, bad=True)
    proc = _run(f"--jsonl={jsonl}", f"--image_root={root}", "--on_error=skip",
                "--report=r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "usable records: 4; bad rows: 4 (policy: skip)" in proc.stdout
    assert "image:missing 1" in proc.stdout and "row 1" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["bad_rows"] == 4


@pytest.mark.parametrize("args,message", [
    ([], "--jsonl and --image_root are required"),
    (["--jsonl=nope.jsonl", "--image_root=."], "--jsonl=nope.jsonl: no such file"),
    (["--on_error=maybe"], "value should be one of"),
    (["--min_pixels=5000", "--max_pixels=100"], "exceeds max_pixels"),
])
def test_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
    jsonl, root = _data_set(tmp_path, bad=False)
    defaults = [] if not args or args[0].startswith("--jsonl") else [
        f"--jsonl={jsonl}", f"--image_root={root}"]
    proc = _run(*defaults, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_check_catches_images_the_resize_cannot_take(tmp_path):
    # A 2000 x 8 strip decodes fine, but Qwen2.5-VL's resizing refuses its aspect ratio.
    jsonl, root = _data_set(tmp_path, bad=False)
    Image.new("RGB", (2000, 8), (90, 90, 90)).save(root / "strip.png")
    with jsonl.open("a") as stream:
        stream.write(json.dumps(_row("s1", "RAF-DB", "strip.png", ["neutral"], [])) + "\n")
    check = sources.check_fea_data(jsonl, root, on_error="raise")
    assert not check.ok
    (problem,) = check.scan.problems
    assert (problem.problem.line, problem.kind) == (5, "image:aspect_ratio")
    # The header check knows the size too; a source that opens nothing accepts the row.
    assert len(sources.FEAJsonlSource(jsonl, root, image_check="header", on_error="skip")) == 4
    assert len(sources.FEAJsonlSource(jsonl, root, image_check="none")) == 5


def test_check_notes_sixteen_bit_images(tmp_path):
    jsonl, root = _data_set(tmp_path, bad=False)
    Image.fromarray(np.full((40, 40), 3000, np.uint16)).save(root / "deep.png")
    with jsonl.open("a") as stream:
        stream.write(json.dumps(_row("s1", "RAF-DB", "deep.png", ["neutral"], [])) + "\n")
    check = sources.check_fea_data(jsonl, root, on_error="raise")
    assert check.ok
    assert check.image_modes()["I;16"] == 1
    assert any("16/32-bit" in note for note in check.notes())
    assert "note: 1 images are 16/32-bit" in check.summary_text()


def test_check_uses_the_given_image_config(tmp_path):
    jsonl, root = _data_set(tmp_path, bad=False)
    tight = image_lib.ImageConfig(max_image_pixels=64 * 48 - 1)
    check = sources.check_fea_data(jsonl, root, on_error="skip", image_config=tight)
    assert check.ok and len(check.scan.records) == 0
    assert check.scan.problems_by_kind() == {"image:too_large": 4}
