"""Sharded Qwen2.5-VL on 8 fake CPU devices (fsdp 4 x tensor 2) equals the 1-device model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from facialr1_jax.models import from_pretrained, get_preset, init_model, multimodal_position_ids, save_pretrained
from facialr1_jax.models import vision_plan
from facialr1_jax.parallel import (
    SAMPLING_RULES,
    TRAINING_RULES,
    activation_sharding,
    logical_to_spec,
    make_mesh,
    shard_model,
    state_shardings,
)

CONFIG = get_preset("tiny")


def _inputs():
    c = CONFIG
    grid = np.array([[1, 8, 12], [1, 4, 4]])
    tokens = grid.prod(axis=1) // 4
    rows = [[20, c.vision_start_token_id] + [c.image_token_id] * int(tokens[0]) + [c.vision_end_token_id, 21],
            [22, 23, 24, c.vision_start_token_id] + [c.image_token_id] * int(tokens[1]) + [c.vision_end_token_id]]
    length = max(map(len, rows)) + 1  # even batch-friendly length, with left padding on both rows
    ids = np.zeros((4, length), np.int32)
    mask = np.zeros((4, length), np.int32)
    for i, row in enumerate(rows + [[30, 31, 32], [33]]):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    positions, _ = multimodal_position_ids(ids, grid, mask, c)
    pixels = np.random.default_rng(0).standard_normal((int(grid.prod(axis=1).sum()), c.vision_config.patch_dim))
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, c.vision_config))
    return jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask), jnp.asarray(pixels, jnp.float32), plan, mask


def _logits(model, inputs):
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, positions, mask, pixels, plan):
        return nnx.merge(graphdef, state).forward(ids, positions, mask, pixels, plan)[0]

    return np.asarray(forward(state, *inputs[:5]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_for_mesh")
    save_pretrained(init_model(CONFIG, seed=11), directory)
    return directory


@pytest.fixture(scope="module")
def single_device_logits(checkpoint):
    return _logits(from_pretrained(checkpoint), _inputs())


@pytest.mark.parametrize("rules", [TRAINING_RULES, SAMPLING_RULES], ids=["training", "sampling"])
def test_fsdp4_tensor2_logits_equal_one_device(checkpoint, single_device_logits, rules):
    assert jax.device_count() == 8
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = from_pretrained(checkpoint, mesh=mesh, rules=rules)
    inputs = _inputs()
    with activation_sharding(mesh, rules):
        logits = _logits(model, inputs)
    real = inputs[-1].astype(bool)
    np.testing.assert_allclose(logits[real], single_device_logits[real], atol=1e-5, rtol=1e-5)


def test_parameters_carry_the_configured_shardings(checkpoint):
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = from_pretrained(checkpoint, mesh=mesh, rules=TRAINING_RULES)
    layer = model.language_model.layers[0]
    block = model.visual.blocks[0]
    expected = {
        "q_proj": (layer.self_attn.q_proj.kernel, P("fsdp", "tensor", None)),
        "k_proj": (layer.self_attn.k_proj.kernel, P("fsdp", "tensor", None)),
        "o_proj": (layer.self_attn.o_proj.kernel, P("tensor", None, "fsdp")),
        "up_proj": (layer.mlp.up_proj.kernel, P("fsdp", "tensor")),
        "down_proj": (layer.mlp.down_proj.kernel, P("tensor", "fsdp")),
        "embed": (model.language_model.embed_tokens, P("tensor", "fsdp")),
        "lm_head": (model.lm_head.kernel, P("fsdp", "tensor")),
        "norm": (layer.input_layernorm.weight, P(None)),
        "qkv": (block.attn.qkv.kernel, P("fsdp", None, "tensor", None)),
        "merger": (model.visual.merger.mlp_in.kernel, P("fsdp", "tensor")),
    }
    for name, (variable, spec) in expected.items():
        sharding = variable[...].sharding
        assert sharding.mesh.shape == mesh.shape, name
        assert sharding.spec == spec, f"{name}: {sharding.spec} != {spec}"
        # Each device holds only its shard (nothing was materialised whole and then split).
        shard_shape = variable[...].addressable_shards[0].data.shape
        assert shard_shape == sharding.shard_shape(variable[...].shape), name

    state_specs = state_shardings(nnx.state(model), mesh, SAMPLING_RULES)
    assert state_specs["language_model"]["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value().spec == P(
        None, "tensor", None)


def test_shard_model_places_a_built_model():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = shard_model(init_model(CONFIG, seed=1), mesh, TRAINING_RULES)
    assert model.language_model.layers[1].mlp.gate_proj.kernel[...].sharding.spec == P("fsdp", "tensor")
    sharded = init_model(CONFIG, seed=1, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(sharded.lm_head.kernel[...]), np.asarray(model.lm_head.kernel[...]))


def test_logical_to_spec_rules():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    assert logical_to_spec(("batch", "length", "act_embed"), TRAINING_RULES) == P(("data", "fsdp"), None, None)
    # A mesh axis that does not divide the dimension is dropped for that array.
    assert logical_to_spec(("embed", "mlp"), TRAINING_RULES, mesh, (6, 8)) == P(None, "tensor")
    assert logical_to_spec(("batch",), TRAINING_RULES, mesh, (2,)) == P("data")  # data has size 1 here
    assert logical_to_spec(("batch",), TRAINING_RULES, mesh, (8,)) == P(("data", "fsdp"))
    # A mesh axis is used once per array.
    assert logical_to_spec(("embed", "vision_embed"), TRAINING_RULES) == P("fsdp", None)
    with pytest.raises(KeyError, match="no entry"):
        logical_to_spec(("embedding",), TRAINING_RULES)
    with pytest.raises(ValueError, match="do not match"):
        logical_to_spec(("embed",), TRAINING_RULES, mesh, (4, 4))


def test_make_mesh_shapes_and_errors():
    mesh = make_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh({"data": 1}, devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices"):
        make_mesh({"fsdp": 3, "tensor": 2})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 8})
    with pytest.raises(ValueError, match="at most one"):
        make_mesh({"data": -1, "fsdp": -1})


def test_cached_decode_under_sampling_rules_equals_one_device(checkpoint):
    ids = np.random.default_rng(5).integers(12, CONFIG.text_config.vocab_size, size=(4, 9)).astype(np.int32)
    positions = np.broadcast_to(np.arange(9)[None, None], (3, 4, 9)).astype(np.int32)
    slot_mask = np.zeros((4, 12), bool)
    slot_mask[:, :9] = True

    def prefill_then_step(model, cache_shardings=None):
        graphdef, state = nnx.split(model)

        @jax.jit
        def run(state, ids, positions, slot_mask):
            m = nnx.merge(graphdef, state)
            cache = m.init_cache(4, 12)
            _, cache = m.forward(ids[:, :8], positions[:, :, :8], slot_mask.at[:, 8].set(False), cache=cache,
                                 cache_index=0)
            logits, cache = m.forward(ids[:, 8:], positions[:, :, 8:], slot_mask, cache=cache, cache_index=8)
            return logits, cache.keys[0]

        return run(state, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(slot_mask))

    expected, _ = prefill_then_step(from_pretrained(checkpoint))
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    with activation_sharding(mesh, SAMPLING_RULES):
        logits, keys = prefill_then_step(from_pretrained(checkpoint, mesh=mesh, rules=SAMPLING_RULES))
    # The cache lives sharded over batch (on fsdp) and key/value heads (on tensor), wherever its layout
    # (text.CACHE_AXES) puts those dimensions.
    from facialr1_jax.models.qwen2_5_vl.text import CACHE_AXES

    expected_spec = P(*[{"cache_batch": "fsdp", "cache_kv_heads": "tensor"}.get(axis) for axis in CACHE_AXES])
    assert keys.sharding.is_equivalent_to(NamedSharding(mesh, expected_spec), keys.ndim)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=1e-5)
