"""Forward-only programs run models built with `remat=True` (every 3B / 7B recipe).

flax's `nnx.remat` layers cannot run inside a loop over parameters merged outside it (the decode
`while_loop`, the `lax.scan` / `lax.map` over micro-batches): "Cannot mutate Param from a different
trace level". The held-out loss (`EvalStep`), greedy evaluation (`GreedyEvaluator`) and GRPO's
log-probs (`make_log_prob_fn` on `step.forward_only`) therefore use the model without remat; each
must give what the same weights built without remat give, and leave the training model as it was.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from facialr1_jax.models import init_model
from facialr1_jax.parallel import TRAINING_RULES, make_mesh
from facialr1_jax.parallel.planning import ExampleShape, synthetic_grpo_batch, synthetic_prompts, synthetic_sft_batch
from facialr1_jax.train import evaluation, grpo_loop
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.sft import sft_loss
from tests.scale import scale_setup

CONFIG = scale_setup.CONFIG


def _models(mesh=None):
    """(remat model, plain model): the same weights (same seed), rematerialised or not."""
    make = lambda remat: init_model(CONFIG, seed=scale_setup.MODEL_SEED, mesh=mesh,
                                    rules=TRAINING_RULES if mesh is not None else None, remat=remat)
    return make(True), make(False)


def _one_device_mesh():
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


def test_without_remat_is_a_view_that_leaves_the_model_alone():
    remat_model, _ = _models()
    view = step_lib.without_remat(remat_model)
    assert view.language_model.remat is False and view.visual.remat is False
    assert remat_model.language_model.remat is True and remat_model.visual.remat is True
    assert view.language_model.embed_tokens[...] is remat_model.language_model.embed_tokens[...]  # no copy


def test_eval_step_runs_a_remat_model():
    mesh = _one_device_mesh()
    batch = synthetic_sft_batch(CONFIG, scale_setup.SFT_SHAPE, num_micro_batches=2, micro_batch_size=2, max_length=64)
    sums = []
    for model in _models():
        model_def, params = state_lib.split_model(model)
        shardings = state_lib.param_shardings(params, mesh)
        sums.append(step_lib.EvalStep(model_def, sft_loss, shardings, mesh)(params, batch))  # host batch
    remat_sums, plain_sums = jax.device_get(sums)
    assert float(plain_sums["denominator"]) > 0
    assert float(remat_sums["denominator"]) == float(plain_sums["denominator"])
    np.testing.assert_allclose(float(remat_sums["loss_sum"]), float(plain_sums["loss_sum"]), rtol=1e-6)


def test_grpo_log_probs_run_a_remat_model():
    mesh = _one_device_mesh()
    shape = ExampleShape(sequence_tokens=16, target_tokens=0, image_grid=(1, 4, 4))
    _, batch = synthetic_grpo_batch(CONFIG, shape, num_prompts=2, num_generations=2, completion_tokens=4,
                                    num_micro_batches=2, with_old_log_probs=False, with_ref_log_probs=False)
    outputs = []
    for model in _models():
        model_def, params = state_lib.split_model(model)
        log_prob_fn = grpo_loop.make_log_prob_fn(step_lib.forward_only(model_def, params),
                                                 state_lib.param_shardings(params, mesh), mesh, 4)
        outputs.append(np.asarray(log_prob_fn(params, batch)))
    assert outputs[0].shape == (2, 2, 4) and np.all(outputs[1] < 0)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


class _IdTokenizer:
    """Decodes ids as their numbers: the test compares token ids, not words."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


@pytest.mark.parametrize("mesh_axes", [None, {"fsdp": 4, "tensor": 2}])
def test_greedy_evaluation_runs_a_remat_model(monkeypatch, mesh_axes):
    monkeypatch.setattr(evaluation, "pad_id_of", lambda tokenizer: 0)
    mesh = None if mesh_axes is None else make_mesh(mesh_axes)
    remat_model, _ = _models(mesh)
    _, plain_model = _models()
    prompts = synthetic_prompts(CONFIG, ExampleShape(sequence_tokens=16, target_tokens=0, image_grid=(1, 4, 4)), 3)
    encoding = types.SimpleNamespace(max_prompt_tokens=32)
    make = lambda evaluator_mesh: evaluation.GreedyEvaluator(
        evaluation.load_generate(), _IdTokenizer(), encoding, CONFIG, max_new_tokens=4, batch_size=4,
        mesh=evaluator_mesh)
    before = {path: variable[...].sharding for path, variable in _params(remat_model)}
    texts = make(mesh).generate_texts(remat_model, prompts)
    expected = make(None).generate_texts(plain_model, prompts)
    assert len(texts) == 3 and all(texts)
    assert texts == expected
    # The training model keeps its remat layers and its parameter placement.
    assert remat_model.language_model.remat is True
    assert {path: variable[...].sharding for path, variable in _params(remat_model)} == before


def _params(model):
    from flax import nnx

    return [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)]
