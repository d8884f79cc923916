"""launch/infer.py: bad input fails fast with one line naming the flag and the file."""

import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _infer(*args, timeout=60):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "infer.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "args,expected",
    [
        ([], "--checkpoint is required"),
        (["--checkpoint={d}/nowhere", "--image={d}/notes.txt"], "--checkpoint={d}/nowhere: no such file or folder"),
        (["--checkpoint={d}"], "give at least one --image=PATH"),
        (["--checkpoint={d}", "--image={d}/notes.txt"], "--image={d}/notes.txt: not an image"),
        (["--checkpoint={d}", "--image={d}/empty.jpg"], "--image={d}/empty.jpg: image file is empty"),
        (["--checkpoint={d}", "--image={d}/missing.png"], "--image={d}/missing.png: image file does not exist"),
        (["--checkpoint={d}", "--image={d}/notes.txt", "--labels=happy,bored"], "--labels: 'bored' is not an emotion"),
        (["--checkpoint={d}", "--image={d}/x.png", "--batch_size=0"], "--batch_size >= 1"),
    ],
)
def test_bad_input_is_one_line_before_any_model_is_loaded(files, args, expected):
    proc, seconds = _infer(*(arg.format(d=files) for arg in args))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected.format(d=files) in lines[0]
    assert "Traceback" not in proc.stderr
    assert seconds < 15.0


def _write_demo_checkpoint(workdir):
    import importlib.util

    path = os.path.join(REPO, "tests", "eval", "demo_checkpoint.py")
    spec = importlib.util.spec_from_file_location("facialr1_eval_demo_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_demo_checkpoint(str(workdir))


def test_infer_prints_one_json_object_per_image_of_every_kind(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from facialr1_jax.data import synthface

    # A photo-sized face (a camera frame, not the 112-px training size), then every image kind.
    face = synthface.render({"AU6": 0.8, "AU12": 1.0, "AU25": 0.5}, identity_seed=11, size=480, pose_seed=4)
    frame = Image.new("RGB", (640, 480), (90, 100, 110))
    frame.paste(face, (80, 0))
    images = {
        "photo.jpg": frame,
        "rgba.png": face.convert("RGBA"),
        "gray.png": face.convert("L"),
        "palette.gif": face.convert("P"),
        "deep.png": Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257),
        "tiny.png": face.resize((1, 1)),
        "huge.jpg": face.resize((6000, 4000)),
    }
    for name, picture in images.items():
        picture.save(tmp_path / name)
    workdir = _write_demo_checkpoint(tmp_path / "run")
    proc, _ = _infer(f"--checkpoint={workdir}", *(f"--image={tmp_path / name}" for name in images),
                     "--max_new_tokens=6", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(tmp_path / name) for name in images]
    for line in lines:
        assert set(line) == {"image", "emotion", "answer", "aus", "au_names", "reasoning", "format_valid", "raw"}
        assert isinstance(line["raw"], str) and isinstance(line["aus"], list)
