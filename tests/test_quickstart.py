"""The quickstart notebook (notebooks/): paired with its jupytext source, and it runs top to bottom in a
fresh Jupyter kernel at its smoke size, producing every artefact it shows."""

import importlib.util
import json
import os

import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "notebooks", "quickstart.py")
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def _runner():
    spec = importlib.util.spec_from_file_location("quickstart_execute", os.path.join(REPO, "notebooks", "execute.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(notebook):
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def _errors(notebook):
    return [(index, output.get("ename"), output.get("evalue")) for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" for output in cell.outputs if output.output_type == "error"]


def _stdout(notebook) -> str:
    return "".join(output.text for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
                   if output.output_type == "stream" and output.name == "stdout")


def _pictures(notebook) -> int:
    kinds = {"image/png", "image/jpeg"}
    return sum(bool(kinds & set(output.get("data", {}))) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


def test_committed_notebook_is_generated_from_its_jupytext_source():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(committed)
    assert _cells(committed) == _cells(_runner().generate(SOURCE)), (
        "notebooks/quickstart.ipynb is out of date with notebooks/quickstart.py: run python notebooks/execute.py")
    assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert "formats: ipynb,py:percent" in open(SOURCE, encoding="utf-8").read()
    # It carries the outputs of a complete run.
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not _errors(committed)
    assert _pictures(committed) >= 5


def test_notebook_text():
    text = open(SOURCE, encoding="utf-8").read()
    assert text.count("# %% [markdown]") >= 8 and text.count("\n# %%\n") >= 9
    first_code = text.split("\n# %%\n")[1]
    assert 'REPO_URL = ""' in first_code and "pip" in first_code and "jax.default_backend()" in first_code
    assert "Open in Colab" in text.split("# %%")[1]
    assert "docs/quickstart" not in text


def test_notebook_runs_at_smoke_size(tmp_path):
    out, workdir = tmp_path / "quickstart.ipynb", tmp_path / "work"
    notebook = _runner().execute("smoke", str(out), workdir=str(workdir), timeout=900)

    written = nbformat.read(str(out), as_version=4)
    nbformat.validate(written)
    assert _cells(written) == _cells(notebook)
    code = [cell for cell in written.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "every code cell ran, in order"
    assert not _errors(written)
    # grid of faces, analysed faces, confusion matrix, training curves, synthesis yield
    assert _pictures(written) >= 5

    stdout = _stdout(written)
    assert "backend: CPU" in stdout and "size: smoke" in stdout
    assert "instruction: Describe the facial movements" in stdout  # demo-base's perception answers
    assert "SFT completed at step 2" in stdout
    assert "| metric (greedy, 4 test records) | SFT (before) | GRPO (after) | change |" in stdout
    assert "Facial-R1 (paper)" in stdout  # the evaluation's console report
    assert "synthesis round 1: " in stdout

    assert (workdir / "sft" / "checkpoints").is_dir()
    assert (workdir / "sft" / "loss_curve.png").stat().st_size > 1000
    assert (workdir / "grpo" / "grpo_report.md").is_file()
    grpo = json.loads((workdir / "grpo" / "grpo_result.json").read_text())
    assert grpo["status"] == "completed" and grpo["step"] == 1 and grpo["before"] and grpo["after"]
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())["benchmarks"]["synthface"]
    assert metrics["num_examples"] == 4
    assert (workdir / "eval" / "confusion-synthface.png").stat().st_size > 1000
    stats = json.loads((workdir / "synth" / "synth_stats.json").read_text())
    assert stats["annotated"] == 2
