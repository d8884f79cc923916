"""Stage 3 end to end with a real (small, untrained) model: SIGKILL mid-run, resume, same files.

The reference run goes through `run_synthesis` in this process; the interrupted one is
`launch/train.py --config=configs/synth.py` in a subprocess, killed with SIGKILL once the manifest
lists a finished block (no chance to clean up), then launched again into the same workdir. With K = 2
sampled candidates per attempt the texts are random, so byte-equal shards show that the resumed run
draws with the same keys and batches as the uninterrupted one; no record is lost or written twice.
The fast suite covers the same property in-process with an injected failure (test_synthesize.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from flax import nnx

from facialr1_jax import models
from facialr1_jax.fea.records import read_jsonl
from facialr1_jax.synth.shards import MANIFEST_FILE, shard_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_RECORDS = 6

SMALL_MODEL = dict(
    text_config={"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "mrope_section": [4, 6, 6]},
    vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 1, "out_hidden_size": 64,
                   "fullatt_block_indexes": [0]},
)


def _overrides(model_dir, cache):
    return {
        "synth.checkpoint": str(model_dir),
        "data.builtin_dir": str(cache),
        "data.builtin_num_sft": 4,
        "data.builtin_num_rl": NUM_RECORDS,
        "data.builtin_num_test": 4,
        "synth.shard_size": 1,
        "synth.batch_size": 2,
        "synth.max_attempts": 2,
        # The full prompt keeps every prompt of the run in one length bucket (one compile).
        "synth.prompt_variant": "full",
        "synth.max_new_tokens": 6,
        "synth.num_candidates": 2,
        "synth.temperature": 1.0,
        "logging.progress_bar": False,
    }


def _env(cache):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"  # the same device count as this process (tests/conftest.py): same numerics
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "xla")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _command(workdir, overrides):
    flags = [f"--config.{key}={value}" for key, value in overrides.items()]
    return [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--config={REPO}/configs/synth.py",
            f"--workdir={workdir}", *flags]


def _finished_blocks(workdir):
    try:
        with open(os.path.join(workdir, MANIFEST_FILE), encoding="utf-8") as stream:
            return sorted(int(block) for block in json.load(stream)["blocks"])
    except (FileNotFoundError, json.JSONDecodeError):
        return []


pytestmark = pytest.mark.slow  # two subprocesses and three compiles: about a minute on an idle 2-core machine


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth_model")
    model = models.Qwen2_5_VL(models.get_preset("demo", **SMALL_MODEL), rngs=nnx.Rngs(3))
    models.save_pretrained(model, folder)
    return folder


def test_sigkill_then_resume_writes_the_uninterrupted_shards(tmp_path, small_model):
    import importlib

    from facialr1_jax.synth.run import run_synthesis

    cache = tmp_path / "cache"
    overrides = _overrides(small_model, cache)
    config = importlib.import_module("configs.synth").get_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    reference = tmp_path / "reference"
    stats = run_synthesis(config, str(reference))
    assert stats["annotated"] == NUM_RECORDS

    resumed = tmp_path / "resumed"
    env = _env(str(cache))
    process = subprocess.Popen(_command(resumed, overrides), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not _finished_blocks(resumed):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=60)
    done = _finished_blocks(resumed)
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    assert 1 <= len(done) < NUM_RECORDS, "the kill must land after some blocks and before the last"
    assert done == list(range(len(done)))

    finished = subprocess.run(_command(resumed, overrides), env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming in" in finished.stderr

    shard_names = sorted(os.path.basename(path) for path in shard_files(reference, "accepted")
                         + shard_files(reference, "rejected"))
    assert len(shard_names) == 2 * NUM_RECORDS
    assert sorted(os.path.basename(path) for path in shard_files(resumed, "accepted")
                  + shard_files(resumed, "rejected")) == shard_names
    for name in shard_names:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    ids = [record.id for name in shard_names for record in read_jsonl(resumed / name).records]
    assert len(ids) == len(set(ids)) == NUM_RECORDS
    # Sampled answers really differ between records (else byte equality would prove little).
    answers = {attempt["answer"] for name in shard_names if name.startswith("rejected")
               for record in read_jsonl(resumed / name).records
               for attempt in record.meta_info["synthesis"]["attempts"]}
    assert len(answers) > NUM_RECORDS
