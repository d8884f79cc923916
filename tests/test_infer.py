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
