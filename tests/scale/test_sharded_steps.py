"""SFT and GRPO train steps on 8 fake CPU devices equal the 1-device steps.

The tiny Qwen2.5-VL preset (cut to one decoder layer and two vision blocks; SFT micro-batches carry
images, so the vision tower is in the step) is trained for two steps on three meshes: one device,
fsdp 4 x tensor 2, and data 2 x fsdp 4. Losses and gradient norms of both steps (the second one's
come from the updated parameters) must agree to 1e-5 (relative, float32), and afterwards every
parameter and both Adam moments must sit in the sharding their logical axes map to under
TRAINING_RULES.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from facialr1_jax.parallel import TRAINING_RULES, logical_to_spec, make_mesh, variable_logical_axes
from facialr1_jax.parallel.planning import ExampleShape, synthetic_grpo_batch, synthetic_sft_batch
from facialr1_jax.train import grpo_loop
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.sft import sft_loss
from tests.scale import scale_setup

CONFIG = scale_setup.CONFIG
MESHES = {"fsdp4_tensor2": {"fsdp": 4, "tensor": 2}, "data2_fsdp4": {"data": 2, "fsdp": 4}}
RTOL = 1e-5


def _grpo_loss():
    settings = dict(eps_low=0.2, eps_high=0.28, beta=0.04, kl_estimator="k3", aggregation="seq_mean_token_mean",
                    ratio_level="token", max_length=scale_setup.GRPO_BATCH["completion_tokens"])
    # Stored old log-probs (mu > 1) make the ratio differ from 1, so clipping and KL both act.
    return grpo_loop.make_grpo_loss(settings, use_stored_old_log_probs=True)


def _batches(stage):
    if stage == "sft":
        return [synthetic_sft_batch(CONFIG, scale_setup.SFT_SHAPE, **scale_setup.SFT_BATCH, seed=s) for s in (0, 1)]
    # Text-only prompts: the vision tower's sharding is covered by the SFT case at half the compile time.
    shape = ExampleShape(sequence_tokens=16, target_tokens=0, image_grid=None)
    return [synthetic_grpo_batch(CONFIG, shape, **scale_setup.GRPO_BATCH, with_old_log_probs=True,
                                 with_ref_log_probs=True, seed=s)[1] for s in (0, 1)]


def _train(stage, mesh):
    model, tx, schedule = scale_setup.model_and_optimizer(mesh)
    model_def, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    loss_fn = sft_loss if stage == "sft" else _grpo_loss()
    train_step = step_lib.TrainStep(model_def, loss_fn, tx, schedule, shardings, mesh, rules=TRAINING_RULES)
    metrics = []
    compiled = None
    for batch in _batches(stage):
        device_batch = step_lib.put_batch(batch, step_lib.batch_shardings(batch, mesh))
        if compiled is None:
            compiled = scale_setup.aot_compile(train_step, state, device_batch)
        state, row = compiled(state, device_batch)
        metrics.append({k: float(row[k]) for k in ("loss", "grad_norm", "denominator", *_extras(stage))})
    return model_def, state, metrics


def _extras(stage):
    return ("kl_sum", "clip_fraction_sum") if stage == "grpo" else ()


@pytest.fixture(scope="module", params=["sft", "grpo"])
def reference(request):
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    _, state, metrics = _train(request.param, mesh)
    return request.param, jax.tree.map(np.asarray, state.params), metrics


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_step_equals_one_device(reference, mesh_name):
    stage, reference_params, reference_metrics = reference
    assert jax.device_count() == 8
    mesh = make_mesh(MESHES[mesh_name])
    model_def, state, metrics = _train(stage, mesh)

    for ours, theirs in zip(metrics, reference_metrics, strict=True):
        assert ours["denominator"] == theirs["denominator"] > 0
        for name in ("loss", "grad_norm", *_extras(stage)):
            np.testing.assert_allclose(ours[name], theirs[name], rtol=RTOL, err_msg=name)
    if stage == "grpo":
        assert reference_metrics[0]["clip_fraction_sum"] > 0 and reference_metrics[0]["kl_sum"] > 0
    # Parameters (after two donated steps) and their Adam moments carry the configured shardings.
    split = 0
    for path, variable in nnx.iter_graph(model_def.merge(state.params)):
        if not isinstance(variable, nnx.Param):
            continue
        axes, value = variable_logical_axes(variable), variable[...]
        expected = logical_to_spec(axes, TRAINING_RULES, mesh, value.shape) if axes else PartitionSpec()
        assert value.sharding.spec == expected, (path, value.sharding.spec, expected)
        split += any(entry is not None for entry in expected)
    assert split >= 10  # the check means something only if many parameters are actually split
    adam_states = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                   if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam_states) == 1
    for moment in (adam_states[0].mu, adam_states[0].nu):
        for ours, param in zip(jax.tree.leaves(moment), jax.tree.leaves(state.params), strict=True):
            assert ours.sharding.spec == param.sharding.spec


def test_embedding_is_split_over_tensor_and_fsdp():
    """Guards the sharding check above against an all-replicated rules table."""
    mesh = make_mesh(MESHES["fsdp4_tensor2"])
    model, _, _ = scale_setup.model_and_optimizer(mesh)
    embedding = model.language_model.embed_tokens[...]
    assert embedding.sharding.spec == PartitionSpec("tensor", "fsdp")
    assert embedding.addressable_shards[0].data.shape == (CONFIG.text_config.vocab_size // 2,
                                                          CONFIG.text_config.hidden_size // 4)
