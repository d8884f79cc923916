"""orbax checkpoints of the train state: round trip, keep-N, data iterator state, path resolution."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.parallel import make_mesh
from facialr1_jax.train import checkpoint as ckpt
from facialr1_jax.train import optim, state as state_lib


class Toy(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 6, rngs=rngs)
        self.norm = nnx.LayerNorm(6, rngs=rngs)


def _optimizer():
    c = ml_collections.ConfigDict(
        dict(lr=1e-2, schedule="constant", warmup_steps=0, end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
             weight_decay=0.0, grad_clip=1.0)
    )
    return optim.make_optimizer(c, total_steps=10)


def _state(seed=0, mesh=None):
    mesh = mesh or make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, _ = _optimizer()
    model_def, state, shardings = state_lib.create_train_state(Toy(nnx.Rngs(seed)), tx, seed=seed, mesh=mesh)
    return tx, model_def, state, shardings


def _perturbed(state, step):
    """A state that differs from the initial one everywhere (params, moments, step, rng)."""
    bump = lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x
    return state.replace(
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(bump, state.params),
        opt_state=jax.tree.map(bump, state.opt_state),
        rng=jax.random.fold_in(state.rng, 7),
    )


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_round_trip_with_data_state_and_meta(tmp_path):
    _, _, state, shardings = _state()
    saved = _perturbed(state, 3)
    checkpointer = ckpt.Checkpointer(tmp_path, max_to_keep=2, async_save=True)
    data_state = {"next_index": 24, "epoch": 1}
    checkpointer.save(saved, meta={"stage": "sft", "note": "x"}, data_state=data_state)
    checkpointer.wait()
    assert checkpointer.latest_step() == 3

    fresh_checkpointer = ckpt.Checkpointer(tmp_path)
    restored = fresh_checkpointer.restore(3, state, shardings)
    _assert_trees_equal(restored.state, saved)
    assert restored.step == 3
    assert restored.data_state == data_state
    assert restored.meta["stage"] == "sft" and restored.meta["format"] == ckpt.META_FORMAT
    # The restored arrays carry the requested shardings.
    for leaf, sharding in zip(jax.tree.leaves(restored.state), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    process_files = [f for f in os.listdir(tmp_path / "checkpoints" / "3" / "data") if f.endswith(".json")]
    assert process_files == ["process_0-of-1.json"]
    fresh_checkpointer.close()
    checkpointer.close()


def test_data_state_is_captured_at_save_time(tmp_path):
    """The iterator state must describe the saved step even though arrays are written asynchronously."""
    _, _, state, _ = _state()
    checkpointer = ckpt.Checkpointer(tmp_path, async_save=True)
    live = {"next_index": 8}
    checkpointer.save(_perturbed(state, 1), meta={}, data_state=live)
    live["next_index"] = 999  # the loop moves on immediately
    checkpointer.wait()
    written = json.loads((tmp_path / "checkpoints" / "1" / "data" / "process_0-of-1.json").read_text())
    assert written == {"next_index": 8}
    checkpointer.close()


def test_keeps_only_the_newest_checkpoints(tmp_path):
    _, _, state, _ = _state()
    checkpointer = ckpt.Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3, 4):
        checkpointer.save(_perturbed(state, step), meta={})
    checkpointer.wait()
    assert checkpointer.all_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    checkpointer.close()


def test_restore_onto_a_sharded_mesh(tmp_path):
    _, _, state, _ = _state()
    checkpointer = ckpt.Checkpointer(tmp_path)
    checkpointer.save(_perturbed(state, 2), meta={})
    checkpointer.wait()
    mesh = make_mesh({"data": 2, "fsdp": 4})
    _, _, target, shardings = _state(mesh=mesh)
    restored = checkpointer.restore(2, target, shardings)
    _assert_trees_equal(jax.device_get(restored.state), jax.device_get(_perturbed(state, 2)))
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(restored.state))
    checkpointer.close()


def test_resolve_checkpoint_accepts_workdir_step_dir_and_hf_dir(tmp_path):
    _, _, state, _ = _state()
    workdir = tmp_path / "run"
    checkpointer = ckpt.Checkpointer(workdir)
    for step in (5, 10):
        checkpointer.save(_perturbed(state, step), meta={})
    checkpointer.close()
    manager_dir = str(workdir / "checkpoints")
    assert ckpt.resolve_checkpoint(workdir) == ("orbax", manager_dir, 10)
    assert ckpt.resolve_checkpoint(workdir / "checkpoints") == ("orbax", manager_dir, 10)
    assert ckpt.resolve_checkpoint(workdir / "checkpoints" / "5") == ("orbax", manager_dir, 5)

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert ckpt.resolve_checkpoint(hf) == ("hf", str(hf), None)

    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "hf" / ".." / "run" / "..")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "missing")


def test_load_model_from_workdir_step_dir_and_hugging_face_dir(tmp_path):
    from facialr1_jax import models

    config = models.get_preset("tiny")
    model = models.Qwen2_5_VL(config, rngs=nnx.Rngs(3))
    tx, _ = _optimizer()
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    _, state, _ = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    trained = state.replace(step=jnp.asarray(7, jnp.int32),
                            params=jax.tree.map(lambda p: p * 1.5 + 0.25, state.params))
    meta = ckpt.model_meta(config, preset="tiny", dtype="float32", param_dtype="float32", tokenizer="")
    checkpointer = ckpt.Checkpointer(tmp_path / "run")
    checkpointer.save(trained, meta={**meta, "stage": "sft"})
    checkpointer.close()

    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "7"):
        loaded, tokenizer, info = ckpt.load_model(path)
        assert info["kind"] == "orbax" and info["step"] == 7 and info["preset"] == "tiny"
        assert loaded.config == config
        _, loaded_params = state_lib.split_model(loaded)
        _assert_trees_equal(jax.device_get(loaded_params), jax.device_get(trained.params))
        assert hasattr(tokenizer, "encode")

    # Exported to the Hugging Face layout, the same weights come back through from_pretrained.
    models.save_pretrained(loaded, tmp_path / "hf")
    from_hf, _, info = ckpt.load_model(tmp_path / "hf")
    assert info["kind"] == "hf" and info["step"] is None
    _, hf_params = state_lib.split_model(from_hf)
    _assert_trees_equal(jax.device_get(hf_params), jax.device_get(trained.params))
