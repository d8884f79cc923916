"""The shared train step: gradient accumulation divides by the global token count, shardings hold.

A toy NNX language model (embedding -> MLP -> vocabulary) stands in for Qwen2.5-VL here: these
tests are about the step's arithmetic, not the model.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.parallel import make_mesh
from facialr1_jax.train import losses, optim, state as state_lib, step as step_lib

VOCAB, WIDTH, LENGTH = 32, 16, 12


class ToyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.hidden = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.out = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = x + jnp.cumsum(jax.nn.gelu(self.hidden(x)), axis=1) / 4.0  # mixes positions like attention would
        return self.out(self.norm(x))


def toy_loss(model, batch, rng):
    del rng
    logits = model(batch["input_ids"])
    return losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])


def make_batch(num_examples=8, seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, VOCAB, size=(num_examples, LENGTH)).astype(np.int32)
    targets = np.roll(ids, -1, axis=1)
    mask = np.zeros((num_examples, LENGTH), np.float32)
    # Very different token counts per example: a mean of per-micro-batch means would be wrong.
    for row, count in enumerate([1, 11, 3, 7, 2, 9, 5, 10][:num_examples]):
        mask[row, LENGTH - 1 - count : LENGTH - 1] = 1.0
    return {"input_ids": ids, "targets": targets.astype(np.int32), "loss_mask": mask}


def as_micro(batch, num_micro):
    return jax.tree.map(lambda x: x.reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:]), batch)


def optimizer_config(**changes):
    c = ml_collections.ConfigDict(
        dict(lr=1e-2, schedule="linear", warmup_steps=2, end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
             weight_decay=0.01, grad_clip=1.0)
    )
    c.update(changes)
    return c


def grads_for(num_micro, dtype=jnp.float32):
    model = ToyLM(nnx.Rngs(0))
    model_def, params = state_lib.split_model(model)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    batch = as_micro(make_batch(), num_micro)
    grads, loss_sum, denom, extras = jax.jit(
        lambda p, b: step_lib.accumulate(model_def, toy_loss, p, b, jax.random.PRNGKey(0), with_grads=True)
    )(params, batch)
    return jax.tree.map(lambda g: g / denom, grads), loss_sum / denom, denom, extras


def test_four_micro_batches_of_two_equal_one_batch_of_eight():
    full, loss_full, denom_full, extras_full = grads_for(1)
    micro, loss_micro, denom_micro, extras_micro = grads_for(4)
    assert float(denom_full) == float(denom_micro) == 48.0  # 1+11+3+7+2+9+5+10 target tokens
    np.testing.assert_allclose(float(loss_micro), float(loss_full), rtol=1e-6)
    np.testing.assert_allclose(float(extras_micro["correct"]), float(extras_full["correct"]), rtol=0)
    for g_full, g_micro in zip(jax.tree.leaves(full), jax.tree.leaves(micro)):
        scale = float(jnp.max(jnp.abs(g_full)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(g_micro), np.asarray(g_full), rtol=1e-6, atol=1e-6 * scale)


def test_mean_of_micro_batch_means_would_differ():
    """Guards the test above: with these masks, averaging per micro-batch means is measurably wrong."""
    batch = as_micro(make_batch(), 4)
    model = ToyLM(nnx.Rngs(0))
    means = []
    for index in range(4):
        micro = jax.tree.map(lambda x: x[index], batch)
        loss_sum, count, _ = toy_loss(model, micro, None)
        means.append(float(loss_sum / count))
    _, loss_full, _, _ = grads_for(1)
    assert abs(np.mean(means) - float(loss_full)) > 1e-3


def test_train_step_matches_optax_reference_and_counts_steps():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    model_def, state, shardings = state_lib.create_train_state(ToyLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
    initial_params = jax.tree.map(np.asarray, state.params)
    train_step = step_lib.TrainStep(model_def, toy_loss, tx, schedule, shardings, mesh)
    batch = as_micro(make_batch(), 2)
    for _ in range(3):
        state, metrics = train_step(state, batch)
    assert int(state.step) == 3
    assert float(metrics["lr"]) == pytest.approx(float(schedule(2)))

    # The same three updates written directly with optax on the whole batch.
    params = jax.tree.map(jnp.asarray, initial_params)
    opt_state = tx.init(params)
    flat = make_batch()

    def loss(p):
        loss_sum, count, _ = toy_loss(model_def.merge(p), flat, None)
        return loss_sum / count

    for _ in range(3):
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
    np.testing.assert_allclose(float(metrics["loss"]), float(value), rtol=1e-5)
    for ours, reference in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-6)


def test_sharded_step_equals_single_device_step():
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    results = []
    for mesh in (make_mesh({"data": 1}, devices=jax.devices()[:1]), make_mesh({"data": 4, "fsdp": 2})):
        model_def, state, shardings = state_lib.create_train_state(ToyLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
        train_step = step_lib.TrainStep(model_def, toy_loss, tx, schedule, shardings, mesh)
        batch = as_micro(make_batch(), 1)
        state, metrics = train_step(state, batch)
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.params)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_shardings_split_examples_and_replicate_packed_vision():
    mesh = make_mesh({"data": 4, "fsdp": 2})
    batch = {
        "input_ids": np.zeros((2, 8, 16), np.int32),
        "odd_rows": np.zeros((2, 3, 16), np.int32),
        "vision": {"pixel_values": np.zeros((2, 64, 12), np.float32)},
    }
    shardings = step_lib.batch_shardings(batch, mesh)
    assert shardings["input_ids"].spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
    assert shardings["odd_rows"].spec == jax.sharding.PartitionSpec()
    assert shardings["vision"]["pixel_values"].spec == jax.sharding.PartitionSpec()


def test_eval_step_sums_equal_the_train_loss():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    model_def, state, shardings = state_lib.create_train_state(ToyLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
    sums = step_lib.EvalStep(model_def, toy_loss, shardings.params, mesh)(state.params, as_micro(make_batch(), 4))
    _, loss_full, denom, _ = grads_for(1)
    assert float(sums["denominator"]) == float(denom)
    np.testing.assert_allclose(float(sums["loss_sum"] / sums["denominator"]), float(loss_full), rtol=1e-6)


def test_step_compiles_once_per_batch_shape():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    model_def, state, shardings = state_lib.create_train_state(ToyLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
    train_step = step_lib.TrainStep(model_def, toy_loss, tx, schedule, shardings, mesh)
    batch = as_micro(make_batch(), 2)
    state, _ = train_step(state, batch)
    compiled = train_step.compiled(batch)
    before = compiled._cache_size()
    for seed in range(1, 4):
        state, _ = train_step(state, as_micro(make_batch(seed=seed), 2))
    assert compiled._cache_size() == before == 1


def test_qwen_micro_batches_equal_full_batch_with_images_of_different_sizes():
    """The real model: per-micro-batch vision packing and padding change nothing in the gradient.

    Computed in float64: in float32 the two summation orders differ by a few ulp per element, which
    three vision blocks amplify to ~1e-6 of a gradient's norm and would hide a real discrepancy.
    """
    from facialr1_jax import models
    from facialr1_jax.data import batching
    from facialr1_jax.data.examples import TrainExample
    from facialr1_jax.train import sft

    config = models.get_preset("tiny")
    rs = np.random.RandomState(0)
    grids = [(1, 4, 4), (1, 2, 6), (1, 4, 2), (1, 2, 2), (1, 6, 4), (1, 2, 4), (1, 4, 4), (1, 2, 2)]
    examples = []
    for index, grid in enumerate(grids):
        image_tokens = int(np.prod(grid)) // 4
        prompt = [30, 31, config.vision_start_token_id] + [config.image_token_id] * image_tokens + [
            config.vision_end_token_id]
        reply = rs.randint(40, 200, size=3 + 3 * index).tolist()
        ids = np.array(prompt + reply, np.int32)
        label = np.zeros(len(ids), np.float32)
        label[len(prompt):] = 1.0
        examples.append(TrainExample(id=str(index), input_ids=ids, label_mask=label,
                                     pixel_values=rs.randn(int(np.prod(grid)), 1176).astype(np.float32),
                                     image_grid_thw=np.array([grid]), prompt_length=len(prompt), truncated=False))

    with jax.enable_x64(True):
        model = models.Qwen2_5_VL(config, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        model_def, params = state_lib.split_model(model)

        def gradients(num_micro):
            collate = batching.SFTCollator(model_config=config, num_micro_batches=num_micro, max_length=64, pad_id=0)
            batch, _ = batching.split_info(collate(examples))
            batch["vision"]["pixel_values"] = batch["vision"]["pixel_values"].astype(np.float64)
            grads, loss_sum, denom, _ = jax.jit(lambda p, b: step_lib.accumulate(
                model_def, sft.sft_loss, p, b, jax.random.PRNGKey(0), with_grads=True))(params, batch)
            return jax.tree.map(lambda g: g / denom, grads), float(loss_sum / denom)

        full, loss_full = gradients(1)
        micro, loss_micro = gradients(4)

        # Projecting only the trained positions (target_positions) gives the loss of projecting all.
        collate = batching.SFTCollator(model_config=config, num_micro_batches=1, max_length=64, pad_id=0)
        batch, _ = batching.split_info(collate(examples))
        batch["vision"]["pixel_values"] = batch["vision"]["pixel_values"].astype(np.float64)
        for key in ("target_positions", "target_ids", "target_mask"):
            del batch[key]
        _, loss_sum, denom, _ = jax.jit(lambda p, b: step_lib.accumulate(
            model_def, sft.sft_loss, p, b, jax.random.PRNGKey(0), with_grads=False))(params, batch)
    np.testing.assert_allclose(float(loss_sum / denom), loss_full, rtol=1e-12)
    np.testing.assert_allclose(loss_micro, loss_full, rtol=1e-6)
    for (path, g_full), g_micro in zip(jax.tree_util.tree_leaves_with_path(full), jax.tree.leaves(micro)):
        scale = float(jnp.max(jnp.abs(g_full)))
        assert scale > 0, path
        np.testing.assert_allclose(np.asarray(g_micro), np.asarray(g_full), rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=jax.tree_util.keystr(path))
