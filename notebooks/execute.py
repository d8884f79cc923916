"""Regenerates notebooks/quickstart.ipynb from its jupytext source and executes it in place.

    python notebooks/execute.py --size=default                  # the committed notebook, with its outputs
    python notebooks/execute.py --size=smoke --out /tmp/q.ipynb # what the tests run

The source (`notebooks/quickstart.py`, jupytext percent format) is the file one edits; the .ipynb is
written from it, executed top to bottom in a fresh Jupyter kernel (nbclient; the kernel's working
directory is notebooks/), and saved with its outputs and figures embedded. `--size` reaches the
notebook as QUICKSTART_SIZE, the stages' working folder as QUICKSTART_WORKDIR (a temporary folder,
removed afterwards, unless `--workdir` names one). A cell that fails stops the run with the cell's
error; the notebook is then saved as far as it ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "quickstart.py")
NOTEBOOK = os.path.join(HERE, "quickstart.ipynb")
SIZES = ("default", "smoke")


def generate(source: str = SOURCE):
    """The notebook (nbformat v4) jupytext makes of the source, with its pairing metadata."""
    import jupytext

    notebook = jupytext.read(source)
    notebook.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    return notebook


def execute(size: str = "default", out: str = NOTEBOOK, *, workdir: str | None = None, timeout: int = 3600,
            source: str = SOURCE):
    """Writes the notebook generated from `source` to `out`, executed at `size`; returns it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {SIZES}")
    notebook = generate(source)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    scratch = None
    if workdir is None:
        scratch = workdir = tempfile.mkdtemp(prefix="facialr1-quickstart-")
    saved = {name: os.environ.get(name) for name in ("QUICKSTART_SIZE", "QUICKSTART_WORKDIR", "MPLBACKEND")}
    os.environ.update(QUICKSTART_SIZE=size, QUICKSTART_WORKDIR=os.path.abspath(workdir))
    os.environ.pop("MPLBACKEND", None)  # the kernel chooses its inline backend
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": HERE}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError:
        nbformat.write(notebook, out)
        raise
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    nbformat.write(notebook, out)
    print(f"{out}: {sum(cell.cell_type == 'code' for cell in notebook.cells)} code cells executed at size "
          f"{size} in {time.perf_counter() - start:.0f} s", flush=True)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="default", help="the notebook's SIZE (default: %(default)s)")
    parser.add_argument("--out", default=NOTEBOOK, help="the executed notebook (default: notebooks/quickstart.ipynb)")
    parser.add_argument("--workdir", default=None, help="keep the stages' files here (default: a removed temp folder)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run (default: %(default)s)")
    args = parser.parse_args(argv)
    execute(args.size, args.out, workdir=args.workdir, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
