"""The quickstart notebook runs top to bottom (at its smoke size) and produces every artefact."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "docs", "quickstart.py")


def test_quickstart_is_a_jupytext_percent_notebook():
    text = open(NOTEBOOK, encoding="utf-8").read()
    assert "format_name: percent" in text
    cells = [line for line in text.splitlines() if line.startswith("# %%")]
    assert sum(line.startswith("# %% [markdown]") for line in cells) >= 5
    assert len(cells) >= 10
    # The notebook must not depend on anything but the repository and the built-in data.
    assert "http" not in "".join(line for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.slow  # SFT, GRPO and evaluation each compile their programs: about 80 s of CPU time
def test_quickstart_runs_end_to_end(tmp_path):
    env = dict(os.environ, QUICKSTART_SIZE="smoke", QUICKSTART_WORKDIR=str(tmp_path), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for picture in ("faces.png", "analysis.png", "confusion.png"):
        assert (tmp_path / picture).stat().st_size > 1000, picture
    assert (tmp_path / "sft" / "checkpoints").is_dir()
    assert (tmp_path / "grpo" / "grpo_report.md").is_file()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["benchmarks"]["synthface"]
    assert metrics["num_examples"] == 4
    assert "Facial-R1 (paper)" in proc.stdout
