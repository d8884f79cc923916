"""Hugging Face checkpoints: round trips, sharded files, both naming schemes, tied heads, bad files."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from facialr1_jax.models import from_pretrained, get_preset, init_model, save_pretrained
from facialr1_jax.models.hf_io import INDEX_FILE, parse_size
from facialr1_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from tests.models.hf_reference import make_reference, reference_logits

IDS = np.array([[1, 30, 40, 50, 60, 70, 80]])


def _same_parameters(a, b):
    from flax import nnx

    flat_a = {p: v for p, v in nnx.iter_graph(a) if isinstance(v, nnx.Variable)}
    flat_b = {p: v for p, v in nnx.iter_graph(b) if isinstance(v, nnx.Variable)}
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[path][...]), np.asarray(flat_b[path][...]), err_msg=str(path))


@pytest.mark.torch
def test_round_trip_pytorch_ours_pytorch_gives_identical_logits(tiny_reference, tiny_reference_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    ours = from_pretrained(tiny_reference_dir)
    files = save_pretrained(ours, tmp_path / "export", max_shard_size="100KB")
    assert any(f.endswith(INDEX_FILE) for f in files) and len(files) > 4  # really sharded
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    original_state = tiny_reference.state_dict()
    for name, tensor in reloaded.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), original_state[name].numpy(), err_msg=name)
    np.testing.assert_array_equal(reference_logits(reloaded, IDS), reference_logits(tiny_reference, IDS))


@pytest.mark.torch
def test_pytorch_sharded_checkpoint_with_index_loads(tiny_reference, tiny_ours, tmp_path):
    tiny_reference.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / INDEX_FILE).exists()
    _same_parameters(from_pretrained(tmp_path), tiny_ours)


@pytest.mark.torch
def test_transformers5_in_memory_names_load(tiny_reference, tiny_reference_dir, tiny_ours, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_reference.state_dict().items()}
    assert any(k.startswith("model.visual.") for k in state)
    assert any(k.startswith("model.language_model.") for k in state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((tiny_reference_dir / "config.json").read_text())
    _same_parameters(from_pretrained(tmp_path), tiny_ours)


@pytest.mark.torch
def test_tied_embeddings_parity_and_export(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = get_preset("tiny", tie_word_embeddings=True)
    reference = make_reference(config, seed=5)
    reference.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert ours.lm_head is None
    np.testing.assert_allclose(np.asarray(ours(IDS)), reference_logits(reference, IDS), atol=1e-4, rtol=1e-4)
    save_pretrained(ours, tmp_path / "out")
    assert "lm_head.weight" not in SafetensorsFile(tmp_path / "out" / "model.safetensors").keys()
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_array_equal(reference_logits(reloaded, IDS), reference_logits(reference, IDS))


@pytest.mark.torch
def test_bfloat16_export_is_read_by_transformers_and_by_us(tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = init_model(get_preset("tiny"), seed=1)
    save_pretrained(model, tmp_path, dtype=jnp.bfloat16)
    stored = SafetensorsFile(tmp_path / "model.safetensors")
    assert stored.dtype("model.embed_tokens.weight") == np.dtype(ml_dtypes.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ours = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    embed_ref = reference.state_dict()["model.language_model.embed_tokens.weight"].float().numpy()
    np.testing.assert_array_equal(np.asarray(ours.language_model.embed_tokens[...].astype(jnp.float32)), embed_ref)
    expected = np.asarray(model.language_model.embed_tokens[...]).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(embed_ref, expected)


def test_our_round_trip_without_torch(tmp_path):
    model = init_model(get_preset("tiny"), seed=2)
    save_pretrained(model, tmp_path, max_shard_size=200_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shard_names = set(index["weight_map"].values())
    assert len(shard_names) > 1
    tensor_bytes = sum(SafetensorsFile(tmp_path / file).get(name).nbytes
                       for name, file in index["weight_map"].items())
    assert index["metadata"]["total_size"] == tensor_bytes
    _same_parameters(from_pretrained(tmp_path), model)
    # Exporting again with one file removes the stale shards.
    save_pretrained(model, tmp_path)
    assert sorted(f for f in os.listdir(tmp_path) if "safetensors" in f) == ["model.safetensors"]


def _tamper(directory, rename=None, drop=None, add=None, reshape=None):
    """Rewrites model.safetensors with one change."""
    source = SafetensorsFile(directory / "model.safetensors")
    tensors = {name: np.array(source.get(name)) for name in source.keys()}
    if drop:
        tensors.pop(drop)
    if rename:
        tensors[rename[1]] = tensors.pop(rename[0])
    if add:
        tensors[add] = np.zeros((2,), np.float32)
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    del source
    write_safetensors(directory / "model.safetensors", [(n, t.shape, t.dtype) for n, t in tensors.items()],
                      tensors.__getitem__)


@pytest.mark.parametrize("change, message", [
    (dict(drop="model.layers.1.mlp.up_proj.weight"), "lacks 1 tensors.*model.layers.1.mlp.up_proj.weight"),
    (dict(add="model.layers.9.extra.weight"), "does not use.*model.layers.9.extra.weight"),
    (dict(reshape="visual.blocks.0.attn.qkv.bias"), "visual.blocks.0.attn.qkv.bias has shape"),
])
def test_bad_checkpoints_fail_naming_the_tensor(tmp_path, change, message):
    save_pretrained(init_model(get_preset("tiny")), tmp_path)
    _tamper(tmp_path, **change)
    with pytest.raises((KeyError, ValueError), match=message):
        from_pretrained(tmp_path)


def test_missing_weights_file_is_reported(tmp_path):
    save_pretrained(init_model(get_preset("tiny")), tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_truncated_safetensors_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, [("a", (4, 4), np.float32)], lambda _: np.ones((4, 4), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="tensor 'a'"):
        SafetensorsFile(path)


@pytest.mark.torch
def test_safetensors_files_interoperate_with_the_safetensors_package(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
               "bf16": rng.standard_normal((7,)).astype(ml_dtypes.bfloat16),
               "i64": np.arange(6, dtype=np.int64).reshape(2, 3), "empty": np.zeros((0, 4), np.float32)}
    write_safetensors(tmp_path / "ours.safetensors", [(k, v.shape, v.dtype) for k, v in tensors.items()],
                      tensors.__getitem__)
    loaded = load_file(tmp_path / "ours.safetensors")
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name].float().numpy(), value.astype(np.float32))

    save_file({"w": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)}, tmp_path / "theirs.safetensors")
    theirs = SafetensorsFile(tmp_path / "theirs.safetensors")
    np.testing.assert_array_equal(theirs.get("w").astype(np.float32), np.arange(12).reshape(3, 4))


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("100KB") == 100_000
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")
