"""launch/convert.py: Hugging Face <-> orbax checkpoints from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from facialr1_jax.models import get_preset, init_model, save_pretrained
from facialr1_jax.models.safetensors_io import SafetensorsFile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERT = os.path.join(REPO, "launch", "convert.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True, env=env, timeout=300)


def _tensors(directory) -> dict[str, np.ndarray]:
    out = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            f = SafetensorsFile(os.path.join(directory, name))
            out.update({k: np.array(f.get(k)) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny checkpoint with a (word-level stand-in) tokenizer, as a real Hugging Face folder has."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("convert_src")
    save_pretrained(init_model(get_preset("tiny"), seed=21), directory)
    vocab = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", "hello", "face"])}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                            unk_token="<unk>", pad_token="<|endoftext|>").save_pretrained(directory)
    return directory


def test_hf_to_orbax_and_back(hf_dir, tmp_path):
    result = _run("--to=orbax", f"--src={hf_dir}", f"--dst={tmp_path / 'work'}")
    assert result.returncode == 0, result.stderr
    assert os.path.isdir(tmp_path / "work" / "checkpoints" / "0" / "params")
    result = _run("--to=hf", f"--src={tmp_path / 'work'}", f"--dst={tmp_path / 'hf'}", "--max_shard_size=100KB")
    assert result.returncode == 0, result.stderr
    assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
    assert os.path.exists(tmp_path / "hf" / "tokenizer.json")  # the checkpoint's tokenizer travels along
    source, exported = _tensors(hf_dir), _tensors(tmp_path / "hf")
    assert source.keys() == exported.keys()
    for name in source:
        np.testing.assert_array_equal(exported[name], source[name], err_msg=name)


def test_hf_to_hf_in_bfloat16(hf_dir, tmp_path):
    result = _run("--to=hf", f"--src={hf_dir}", f"--dst={tmp_path}", "--overwrite", "--param_dtype=bfloat16")
    assert result.returncode == 0, result.stderr
    source, exported = _tensors(hf_dir), _tensors(tmp_path)
    for name in source:
        assert exported[name].dtype == np.dtype(ml_dtypes.bfloat16), name
        np.testing.assert_array_equal(exported[name], source[name].astype(ml_dtypes.bfloat16), err_msg=name)


@pytest.mark.parametrize("args, message", [
    (["--src=/nonexistent", "--dst=/tmp/x"], "--to is required"),
    (["--to=hf", "--src=/nonexistent", "--dst=/tmp/x"], "is not a folder"),
    (["--to=json", "--src=/tmp", "--dst=/tmp/x"], "flag error"),
])
def test_bad_flags_fail_with_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_non_empty_destination_and_bad_shard_size_are_refused(hf_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = _run("--to=hf", f"--src={hf_dir}", f"--dst={tmp_path}", "--max_shard_size=10GB")
    assert result.returncode == 2 and "not empty" in result.stderr
    result = _run("--to=hf", f"--src={hf_dir}", f"--dst={tmp_path / 'o'}", "--max_shard_size=huge")
    assert result.returncode == 2 and "--max_shard_size" in result.stderr
