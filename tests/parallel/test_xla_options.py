"""Per-platform compiler options: what they are, that they reach XLA, and that results move by rounding only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from facialr1_jax.parallel import make_mesh, xla_options
from facialr1_jax.train import losses, optim, state as state_lib, step as step_lib
from tests.train.test_sft_step import optimizer_config

VOCAB, WIDTH, ROWS, LENGTH = 256, 128, 8, 32  # wide enough that YNNPACK takes the element-wise fusions


class WideLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.hidden = nnx.Linear(WIDTH, 4 * WIDTH, rngs=rngs)
        self.back = nnx.Linear(4 * WIDTH, WIDTH, rngs=rngs)
        self.norm = nnx.RMSNorm(WIDTH, rngs=rngs)
        self.out = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = x + jnp.cumsum(self.back(jax.nn.silu(self.hidden(x))), axis=1) / LENGTH
        return self.out(self.norm(x))


def wide_loss(model, batch, rng):
    del rng
    return losses.masked_cross_entropy(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])


def wide_batch():
    rs = np.random.RandomState(0)
    ids = rs.randint(0, VOCAB, size=(1, ROWS, LENGTH)).astype(np.int32)  # one micro-batch
    return {"input_ids": ids, "targets": np.roll(ids, -1, axis=2), "loss_mask": np.ones(ids.shape, np.float32)}


def test_cpu_devices_get_the_ynn_options_and_the_switch_turns_them_off(monkeypatch):
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    assert jax.devices()[0].platform == "cpu"
    for target in (None, mesh, jax.devices()[:1], jax.devices()[0]):
        options = xla_options.compiler_options(target)
        assert options == xla_options.CPU_OPTIONS
        assert "LIBRARY_FUSION_TYPE_ELTWISE" in options["xla_cpu_experimental_ynn_fusion_type"]
    monkeypatch.setenv(xla_options.ENV_SWITCH, "none")
    assert xla_options.compiler_options(mesh) is None
    monkeypatch.setenv(xla_options.ENV_SWITCH, "fast")
    with pytest.raises(ValueError, match="FACIALR1_XLA_OPTIONS='fast'"):
        xla_options.compiler_options(mesh)


def test_train_step_options_are_resolved_and_validated():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    assert step_lib.resolve_compiler_options("auto", mesh) == xla_options.CPU_OPTIONS
    assert step_lib.resolve_compiler_options(None, mesh) is None
    assert step_lib.resolve_compiler_options({"xla_backend_optimization_level": 0}, mesh) == {
        "xla_backend_optimization_level": 0}
    with pytest.raises(ValueError, match="'fastest'"):
        step_lib.resolve_compiler_options("fastest", mesh)


def _step(compiler_options):
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    model_def, state, shardings = state_lib.create_train_state(WideLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
    return step_lib.TrainStep(model_def, wide_loss, tx, schedule, shardings, mesh,
                              compiler_options=compiler_options), state


def adam_step_bound(count: int, b1: float, b2: float) -> float:
    """The largest |m_hat / sqrt(v_hat)| AdamW can take at its `count`-th update, whatever the gradients.

    Both bias-corrected moments are weighted sums of the gradients seen so far (weights a_i and c_i),
    so Cauchy-Schwarz bounds the ratio by sqrt(sum a_i^2 / c_i): 1 at the first update, a little
    above it after.
    """
    ages = np.arange(count)[::-1]
    a = (1 - b1) * b1 ** ages / (1 - b1 ** count)
    c = (1 - b2) * b2 ** ages / (1 - b2 ** count)
    return float(np.sqrt(np.sum(a * a / c)))


def parameter_gap_bound(config, lrs) -> float:
    """How far apart two AdamW runs from the same parameters can end after updates at `lrs`, for any
    gradients: each update moves a parameter by at most lr * adam_step_bound (eps only shrinks it),
    and weight decay can widen an existing gap by lr * weight_decay of it."""
    gap = 0.0
    for count, lr in enumerate(lrs, start=1):
        gap = gap * (1 + lr * config.weight_decay) + 2 * lr * adam_step_bound(count, config.b1, config.b2)
    return gap


def first_moment(state):
    return jax.tree.leaves(optax.tree.get(state.opt_state, "mu"))


def test_tuned_options_reach_the_compiler_and_change_results_by_rounding_only():
    batch = wide_batch()
    tuned, tuned_state = _step("auto")
    plain, plain_state = _step(None)
    # The options change what XLA builds: YNNPACK takes element-wise and reduction fusions too.
    custom_fusions = [step.compiled(batch).lower(state, batch).compile().as_text().count("kind=kCustom")
                      for step, state in ((tuned, tuned_state), (plain, plain_state))]
    assert custom_fusions[0] > custom_fusions[1], custom_fusions
    lrs = []
    for count in range(3):
        tuned_state, tuned_metrics = tuned(tuned_state, batch)
        plain_state, plain_metrics = plain(plain_state, batch)
        lrs.append(float(plain_metrics["lr"]))
        # Losses and gradient norms are sums over every parameter: rounding moves them by rounding.
        np.testing.assert_allclose(float(tuned_metrics["loss"]), float(plain_metrics["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(tuned_metrics["grad_norm"]), float(plain_metrics["grad_norm"]),
                                   rtol=1e-5)
        if count == 0:
            assert lrs == [0.0]
            # The first update's lr is 0 (warm-up), so both first moments are 0.1 x the clipped
            # gradient at the same parameters: the gradients themselves, compared element by element.
            for a, b in zip(first_moment(tuned_state), first_moment(plain_state)):
                scale = float(np.max(np.abs(np.asarray(b))))
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    # Parameters go through Adam, which turns a rounding-level change in a near-zero gradient into a
    # step of up to lr: no element-wise tolerance below that holds on every CPU. Every parameter
    # stays within what two AdamW runs can drift apart, and nearly all agree to rounding.
    bound = parameter_gap_bound(optimizer_config(), lrs)
    gaps = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                           zip(jax.tree.leaves(tuned_state.params), jax.tree.leaves(plain_state.params))])
    values = np.concatenate([np.abs(np.asarray(b)).ravel() for b in jax.tree.leaves(plain_state.params)])
    assert gaps.max() <= bound, (gaps.max(), bound)
    tight = gaps <= 1e-6 + 1e-4 * values
    assert tight.mean() >= 0.99, f"{(~tight).sum()} of {tight.size} parameters differ by more than rounding"


def test_the_planner_compiles_with_xla_defaults(monkeypatch):
    """Its fake CPU devices stand in for accelerators: no CPU-only options in its programs."""
    from facialr1_jax.parallel import planning
    from facialr1_jax.train import grpo_loop
    from tests.scale.test_planning import _tiny_sft_config

    seen = []

    class RecordingStep(step_lib.TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.compiler_options)

    monkeypatch.setattr(step_lib, "TrainStep", RecordingStep)
    planning.plan_sft(_tiny_sft_config(), make_mesh({"data": 1}, devices=jax.devices()[:1]))
    assert seen == [None]
    # The GRPO log-prob program resolves its options like the train step (the planner passes None).
    with pytest.raises(ValueError, match="'fastest'"):
        grpo_loop.make_log_prob_fn(None, None, make_mesh({"data": 1}, devices=jax.devices()[:1]), 4,
                                   compiler_options="fastest")
