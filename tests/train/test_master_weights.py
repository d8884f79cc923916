"""Float32 master weights: the paper variants compute in bfloat16 over float32 parameters and AdamW
moments, so an update at the recipe's learning rate moves every parameter it reaches, as a float32
step would; bfloat16 storage under an optimiser is a validation error unless opted into by name."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs import grpo as grpo_config
from facialr1_jax import config_validation, models
from facialr1_jax.parallel import make_mesh, planning
from facialr1_jax.train import optim, sft as sft_lib, state as state_lib, step as step_lib

# The tiny preset with one decoder layer and two vision blocks: every kind of parameter, a short compile.
TINY = dict(text_config={"num_hidden_layers": 1}, vision_config={"depth": 2})
PAPER_VARIANTS = [(name, variant) for name in ("sft", "grpo") for variant in ("qwen2_5_vl_3b", "qwen2_5_vl_7b")]


def paper_config(name="grpo", variant="qwen2_5_vl_7b"):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    for section in (config, config.get("warm_start")):
        if section is not None:  # a real-data variant needs paths from the user to validate
            section.data.train_jsonl, section.data.image_root = "train.jsonl", "images"
    return config


def one_step(dtype: str, param_dtype: str):
    """(params before, params after, first moment, metrics) of one AdamW step of the GRPO 7B recipe's
    optimiser (lr 1e-6, constant) on the tiny preset built with the given dtypes, from the same init."""
    config = grpo_config.get_config("qwen2_5_vl_7b")
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model_config = models.get_preset("tiny", **TINY)
    model = models.Qwen2_5_VL(model_config, dtype=sft_lib.DTYPES[dtype], param_dtype=sft_lib.DTYPES[param_dtype],
                              rngs=nnx.Rngs(0))
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps=10)
    model_def, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    shape = planning.ExampleShape(48, 16, planning.image_grid_for(56 * 56, 56 * 56))
    batch = planning.synthetic_sft_batch(model_config, shape, num_micro_batches=1, micro_batch_size=4, max_length=48)
    train_step = step_lib.TrainStep(model_def, sft_lib.sft_loss, tx, schedule, shardings, mesh, donate=False)
    new_state, metrics = train_step(state, batch)
    host = lambda tree: [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
    return (host(state.params), host(new_state.params), host(optax.tree.get(new_state.opt_state, "mu")),
            {k: float(v) for k, v in metrics.items()})


@pytest.fixture(scope="module")
def steps():
    config = grpo_config.get_config("qwen2_5_vl_7b")
    assert (config.model.dtype, config.model.param_dtype) == ("bfloat16", "float32")
    assert config.optimizer.lr == 1e-6 and config.optimizer.warmup_steps == 0
    return {"master": one_step(config.model.dtype, config.model.param_dtype),
            "float32": one_step("float32", "float32"),
            "bfloat16_storage": one_step("bfloat16", "bfloat16")}


@pytest.mark.parametrize("name,variant", PAPER_VARIANTS)
def test_paper_variants_compute_in_bfloat16_over_float32_parameters(name, variant):
    config = paper_config(name, variant)
    for section in (config, config.get("warm_start")):
        if section is not None:
            assert (section.model.dtype, section.model.param_dtype) == ("bfloat16", "float32")
            assert section.optimizer.allow_bfloat16_params is False
    config_validation.validate(config)


def test_the_bfloat16_compute_path_multiplies_in_bfloat16():
    """Float32 storage must not drag the matmuls to float32: every one takes bfloat16 operands."""
    model_config = models.get_preset("tiny", **TINY)
    model = models.Qwen2_5_VL(model_config, dtype=sft_lib.DTYPES["bfloat16"], param_dtype=sft_lib.DTYPES["float32"],
                              rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shape = planning.ExampleShape(48, 16, planning.image_grid_for(56 * 56, 56 * 56))
    batch = planning.synthetic_sft_batch(model_config, shape, num_micro_batches=1, micro_batch_size=2, max_length=48)
    micro = jax.tree.map(lambda x: x[0], batch)
    jaxpr = jax.make_jaxpr(lambda p: sft_lib.sft_loss(nnx.merge(graphdef, p, rest), micro, None)[0])(params)
    assert {leaf.dtype.name for leaf in jax.tree.leaves(params)} == {"float32"}
    operand_dtypes = [tuple(v.aval.dtype.name for v in eqn.invars) for eqn in _equations(jaxpr.jaxpr)
                      if eqn.primitive.name == "dot_general"]
    assert len(operand_dtypes) > 10
    assert set(operand_dtypes) == {("bfloat16", "bfloat16")}


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_one_step_at_lr_1e6_moves_every_parameter_it_reaches(steps):
    """Every element with a gradient changes; the only ones left are those with none (embedding rows
    of tokens not in the batch, the image placeholder's row). bfloat16 storage loses nearly all."""
    before, after, moment, _ = steps["master"]
    for start, end, first_moment in zip(before, after, moment):
        assert start.dtype == end.dtype == first_moment.dtype == np.float32
        assert np.any(start != end)
        np.testing.assert_array_equal(start != end, first_moment != 0)
    reached = sum(int(np.sum(m != 0)) for m in moment)
    assert reached > 0.9 * sum(m.size for m in moment)
    before16, after16, _, _ = steps["bfloat16_storage"]
    moved16 = sum(int(np.sum(a != b)) for a, b in zip(before16, after16))
    assert moved16 < 0.1 * reached  # the defect master weights fix: most updates round away


def test_the_step_equals_a_float32_step_within_bfloat16_compute_tolerance(steps):
    before, after, moment, metrics = steps["master"]
    before32, after32, moment32, metrics32 = steps["float32"]
    for a, b in zip(before, before32):
        np.testing.assert_array_equal(a, b)  # the same initial float32 parameters
    np.testing.assert_allclose(metrics["loss"], metrics32["loss"], rtol=1e-2)
    np.testing.assert_allclose(metrics["grad_norm"], metrics32["grad_norm"], rtol=2e-2)
    # The gradients (first moments: 0.1 x the clipped gradient), as one vector.
    diff = np.sqrt(sum(np.sum((m.astype(np.float64) - r) ** 2) for m, r in zip(moment, moment32)))
    norm = np.sqrt(sum(np.sum(r.astype(np.float64) ** 2) for r in moment32))
    assert diff < 2e-2 * norm, diff / norm
    # Adam's first update is lr x g / (|g| + eps): the same for all but the near-zero gradients whose
    # sign bfloat16 rounding may flip (at most 2 lr apart).
    lr = metrics["lr"]
    gaps = np.concatenate([np.abs((a - b) - (a32 - b32)).ravel()
                           for a, b, a32, b32 in zip(after, before, after32, before32)])
    assert gaps.max() <= 2.1 * lr
    assert np.mean(gaps <= 0.1 * lr) > 0.99


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["sft", "grpo"])
def test_bfloat16_storage_with_an_optimiser_needs_the_opt_in(name):
    config = paper_config(name)
    config.model.param_dtype = "bfloat16"
    with pytest.raises(config_validation.ConfigError) as info:
        config_validation.validate(config)
    message = str(info.value)
    assert "config.model.param_dtype = 'bfloat16'" in message
    assert "config.model.param_dtype = 'float32'" in message  # the fix
    assert "config.optimizer.allow_bfloat16_params = True" in message  # the opt-in
    config.optimizer.allow_bfloat16_params = True
    config_validation.validate(config)


def test_the_grpo_warm_start_is_checked_with_its_path():
    config = paper_config("grpo")
    config.warm_start.model.param_dtype = "bfloat16"
    with pytest.raises(config_validation.ConfigError,
                       match=r"config\.warm_start\.model\.param_dtype = 'bfloat16'.*config\.warm_start\.optimizer"):
        config_validation.validate(config)


@pytest.mark.parametrize("name,variant", [("synth", "qwen2_5_vl_7b"), ("eval", "paper")])
def test_stages_without_an_optimiser_may_store_bfloat16(name, variant):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    config.model.param_dtype = "bfloat16"
    if config.data.source == "jsonl":
        config.data.train_jsonl, config.data.image_root = "train.jsonl", "images"
    config_validation.validate(config)


# ------------------------------------------------------------------------------------- planner
def test_the_planner_holds_float32_parameters_and_moments():
    """The plan's train state is what training holds: float32 parameters, float32 Adam moments."""
    config = paper_config("sft")
    config.model.preset = "tiny"
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    training = planning.abstract_training(config, planning.model_config_for(config), mesh, total_steps=10)
    for tree in (training.state.params, optax.tree.get(training.state.opt_state, "mu"),
                 optax.tree.get(training.state.opt_state, "nu")):
        assert {leaf.dtype.name for leaf in jax.tree.leaves(tree)} == {"float32"}
    # parameters + two moments at 4 bytes each (and a few scalars: step, counts, RNG)
    assert 12 * training.num_params <= planning.per_device_bytes(training.state) < 12 * training.num_params + 1024
