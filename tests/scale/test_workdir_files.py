"""Workdirs on an object store (gs://), and reports written by several processes into one folder.

No bucket is reachable here, so `gs://` is served by an in-memory fsspec filesystem registered under
the `gs` / `gcs` protocols: the one etils.epath uses for gs:// when TensorFlow is absent (gcsfs in
production). The project's writers must keep the URL as it is (never `os.path.abspath` it), create
folders and write whole files through epath, and read them back.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import types

import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

from facialr1_jax.data import sources
from facialr1_jax.parallel import files
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train.metrics import MetricsLogger, StepJsonl, read_jsonl_rows, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeGCS(MemoryFileSystem):
    """gs://bucket/key stored in memory (its own store, emptied by the fixture)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=False, **kwargs):
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return "/" + path.strip("/")


@pytest.fixture
def fake_gcs(monkeypatch):
    # Registered for this test only: monkeypatch restores fsspec's registry afterwards.
    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its mapping)
    monkeypatch.setattr(registry, "_registry", {**registry._registry, "gs": FakeGCS, "gcs": FakeGCS})
    monkeypatch.setattr(registry, "registry", types.MappingProxyType(registry._registry))
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    yield FakeGCS()
    FakeGCS.store.clear()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_paths_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert files.resolve("gs://bucket/run") == "gs://bucket/run"
    assert files.resolve("run") == str(tmp_path / "run")
    assert files.is_remote("gs://bucket/run") and not files.is_remote("/mnt/bucket/run")


def test_metrics_and_reports_on_gs(fake_gcs):
    workdir = "gs://bucket/runs/sft"
    logger = MetricsLogger(workdir, total_steps=3, tensorboard=False, progress_bar=False)
    for step in (1, 2, 3):
        logger.write(step, {"loss": 1.0 / step})
    curve = logger.close()
    assert curve == "gs://bucket/runs/sft/loss_curve.png"
    assert fake_gcs.cat_file("/bucket/runs/sft/loss_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["step"] for row in read_metrics(workdir, split="train")] == [1, 2, 3]

    # A resumed run at step 2 drops the rows after it, then appends (the object is rewritten whole).
    jsonl = StepJsonl(f"{workdir}/metrics.jsonl", start_step=2)
    jsonl.write({"step": 3, "split": "train", "loss": 0.25})
    jsonl.close()
    assert [row.get("loss") for row in read_jsonl_rows(f"{workdir}/metrics.jsonl")] == [1.0, 0.5, 0.25]

    sources.write_report({"bad_rows": 0}, f"{workdir}/data_report-sft.json")
    files.write_text(f"{workdir}/sft_result.json", json.dumps({"status": "completed"}))
    assert json.loads(fake_gcs.cat_file("/bucket/runs/sft/data_report-sft.json")) == {"bad_rows": 0}
    assert json.loads(files.read_text(f"{workdir}/sft_result.json")) == {"status": "completed"}
    assert not any("tmp" in key for key in fake_gcs.store)  # no temporary objects left behind


def test_checkpoints_are_found_on_gs(fake_gcs):
    workdir = "gs://bucket/runs/grpo/sft"
    for step in (2, 5):
        for item in ("params", "meta"):
            fake_gcs.pipe_file(f"/bucket/runs/grpo/sft/checkpoints/{step}/{item}/_METADATA", b"{}")
    assert checkpoint_lib.resolve_checkpoint(workdir) == ("orbax", f"{workdir}/checkpoints", 5)
    assert checkpoint_lib.resolve_checkpoint(f"{workdir}/checkpoints/2") == ("orbax", f"{workdir}/checkpoints", 2)
    with pytest.raises(FileNotFoundError, match="gs://bucket/missing does not exist"):
        checkpoint_lib.resolve_checkpoint("gs://bucket/missing")


def test_checkpointer_keeps_a_gs_workdir(monkeypatch):
    """orbax is handed gs://.../checkpoints as is (tensorstore writes there itself)."""
    seen = {}

    class RecordingManager:
        def __init__(self, directory, options=None):
            seen["directory"] = os.fspath(directory)

    monkeypatch.setattr(checkpoint_lib.ocp, "CheckpointManager", RecordingManager)
    checkpoint_lib.Checkpointer("gs://bucket/runs/sft")
    assert seen["directory"] == "gs://bucket/runs/sft/checkpoints"


ROUNDS = 3000
WRITER = textwrap.dedent("""
    import sys, time
    from facialr1_jax.data import sources
    path, who, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    time.sleep(max(0.0, start - time.time()))  # both writers start together, after their imports
    for round in range(rounds):
        sources.write_report({"writer": who, "round": round, "rows": list(range(50))}, path)
""")


def test_processes_writing_one_report_do_not_collide(tmp_path):
    """Two processes (hosts of one run) write the same data report into one shared folder at once."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "shared" / "data_report-sft.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = str(time.time() + 8.0)
    writers = [subprocess.Popen(["timeout", "-s", "KILL", "120", sys.executable, str(script), str(target), str(i),
                                 str(ROUNDS), start],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [writer.communicate(timeout=150)[0] for writer in writers]
    for writer, output in zip(writers, outputs):
        assert writer.returncode == 0, output[-3000:]
    report = json.loads(target.read_text())
    assert report["round"] == ROUNDS - 1 and report["rows"] == list(range(50))
    assert sorted(p.name for p in target.parent.iterdir()) == ["data_report-sft.json"]
