"""The compile-only planner: FLOP counters checked against known programs and against each other,
memory that shrinks with FSDP, and `launch/plan.py` ending with its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import grpo as grpo_config
from configs import sft as sft_config
from facialr1_jax.parallel import make_mesh
from facialr1_jax.parallel import planning
from facialr1_jax.sampling.engine import completion_window_steps, completion_windows
from facialr1_jax.train.sft import sft_loss

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
M, K, N = 64, 48, 32
MATMUL = 2.0 * M * K * N


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def _operands():
    return jax.ShapeDtypeStruct((M, K), jnp.float32), jax.ShapeDtypeStruct((K, N), jnp.float32)


# ------------------------------------------------------------------------------------- counters
def test_hlo_count_of_one_matmul_is_2mkn():
    counts = planning.count_hlo(_compiled(jnp.matmul, *_operands()).as_text())
    assert counts.matmul_flops == MATMUL
    assert counts.unknown_trip_count_loops == 0


def test_hlo_count_multiplies_nested_loop_trip_counts_unlike_cost_analysis():
    def nested(a, b):
        def outer(carry, _):
            inner = jax.lax.map(lambda row: (row + carry) @ b, a.reshape(4, M // 4, K))  # 4 trips
            return carry + inner.sum(), None
        return jax.lax.scan(outer, 0.0, None, length=10)[0]  # 10 trips

    compiled = _compiled(nested, *_operands())
    assert planning.count_hlo(compiled.as_text()).matmul_flops == 10 * MATMUL
    assert compiled.cost_analysis()["flops"] < 2 * MATMUL  # XLA's own count sees each body once


def test_hlo_count_of_a_while_loop_without_trip_count_uses_the_given_one():
    def loop(a, b):
        return jax.lax.while_loop(lambda c: c[1].sum() < 1e9, lambda c: (c[0] @ b[:, :K], c[1] + 1.0),
                                  (a, jnp.zeros(())))[0]

    text = _compiled(loop, jax.ShapeDtypeStruct((M, K), jnp.float32),
                     jax.ShapeDtypeStruct((K, K), jnp.float32)).as_text()
    counts = planning.count_hlo(text, unknown_trip_count=7)
    assert counts.unknown_trip_count_loops == 1
    assert counts.matmul_flops == 7 * 2.0 * M * K * K


def _two_windows(a, b):
    """Two while_loops without a known trip count, the second fed by the first and costlier per trip
    (the shape of the rollout's completion windows)."""
    small = jax.lax.while_loop(lambda c: c[1].sum() < 1e9, lambda c: (c[0] @ b[:, :K], c[1] + 1.0),
                               (a, jnp.zeros(())))[0]
    wide = jnp.concatenate([small, small], axis=0)
    return jax.lax.while_loop(lambda c: c[1].sum() < 1e9, lambda c: (c[0] @ b[:, :K], c[1] + 1.0),
                              (wide, jnp.zeros(())))[0]


def test_each_loop_without_trip_count_gets_its_own_in_the_order_they_run():
    operands = jax.ShapeDtypeStruct((M, K), jnp.float32), jax.ShapeDtypeStruct((K, K), jnp.float32)
    per_trip = 2.0 * M * K * K  # the first loop's body; the second one's is twice that
    counts = planning.count_hlo(_compiled(_two_windows, *operands).as_text(), unknown_trip_count=(3, 5))
    assert counts.unknown_trip_count_loops == 2
    assert counts.matmul_flops == 3 * per_trip + 5 * 2 * per_trip
    assert planning.forward_flops(_two_windows, *operands, unknown_trip_count=(3, 5)) == counts.matmul_flops
    assert planning.count_hlo(_compiled(_two_windows, *operands).as_text(), unknown_trip_count=4).matmul_flops \
        == 4 * 3 * per_trip  # one number still counts every loop
    with pytest.raises(ValueError, match="more loops without a known trip count than the 1"):
        planning.count_hlo(_compiled(_two_windows, *operands).as_text(), unknown_trip_count=(3,))
    with pytest.raises(ValueError, match="has 2 while loops, but 3 trip counts"):
        planning.forward_flops(_two_windows, *operands, unknown_trip_count=(3, 5, 7))


def test_hlo_count_is_per_device_and_sees_the_gather():
    mesh = make_mesh({"data": 8})
    rows = NamedSharding(mesh, PartitionSpec("data"))
    a = jax.ShapeDtypeStruct((M, K), jnp.float32, sharding=rows)
    b = jax.ShapeDtypeStruct((K, N), jnp.float32, sharding=rows)  # b is split too, so it must be gathered
    compiled = jax.jit(jnp.matmul, out_shardings=rows).lower(a, b).compile()
    counts = planning.count_hlo(compiled.as_text())
    assert counts.matmul_flops == MATMUL / 8
    assert counts.collective_bytes.get("all-gather", 0) >= K * N * 4 * 7 / 8


def test_jaxpr_count_multiplies_scans_and_takes_the_costlier_branch():
    def fn(a, b, flag):
        scanned = jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=3)[1]
        branch = jax.lax.cond(flag, lambda: (a @ b) @ b.T, lambda: a)
        return scanned, branch

    flops = planning.forward_flops(fn, *_operands(), jax.ShapeDtypeStruct((), jnp.bool_))
    assert flops == 3 * MATMUL + MATMUL + 2.0 * M * N * K


# ------------------------------------------------------------------------------------- stage plans
def _tiny_sft_config():
    c = sft_config.get_config("demo")
    c.model.preset = "tiny"
    c.model.checkpoint = ""  # a fresh, smaller model
    c.model.preset_overrides = json.dumps({"text_config": {"num_hidden_layers": 1}, "vision_config": {"depth": 2}})
    c.data.max_prompt_tokens, c.data.max_target_tokens = 48, 16
    c.data.min_pixels = c.data.max_pixels = 56 * 56
    c.sft.batch_size, c.sft.micro_batch_size = 16, 8
    return c


@pytest.fixture(scope="module")
def sft_plans():
    config = _tiny_sft_config()
    one = planning.plan_sft(config, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    config.mesh.data, config.mesh.fsdp = 1, 8
    return one, planning.plan_sft(config, make_mesh({"fsdp": 8}))


def test_jaxpr_and_hlo_counts_of_the_model_forward_are_equal():
    """The two counters are independent (traced jaxpr vs optimised HLO text): on the tiny model's
    SFT loss they must find exactly the same matmuls."""
    config = _tiny_sft_config()
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model_config = planning.model_config_for(config)
    training = planning.abstract_training(config, model_config, mesh, total_steps=10)
    shape = planning.ExampleShape(64, 16, planning.image_grid_for(56 * 56, 56 * 56))
    batch = planning.synthetic_sft_batch(model_config, shape, num_micro_batches=1, micro_batch_size=4, max_length=64)
    micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch)
    loss = lambda params, b: sft_loss(training.model_def.merge(params), b, None)[0]
    from_jaxpr = planning.forward_flops(loss, training.state.params, micro)
    compiled = jax.jit(loss).lower(training.state.params, micro).compile(compiler_options=planning.compiler_options())
    assert from_jaxpr > 1e7
    assert planning.count_hlo(compiled.as_text()).matmul_flops == from_jaxpr


def test_step_flops_are_three_forwards(sft_plans):
    """The compiled 1-device step (2 scanned micro-batches, vocabulary chunks mapped and recomputed in
    the backward pass, input gradients nobody needs removed) against 3 x forward x 2 micro-batches."""
    one, _ = sft_plans
    assert one.shapes["micro_batches"] == 2 and one.shapes["micro_batch_rows"] == 8
    ratio = one.hardware_flops_per_step / one.flops_per_step
    assert 0.9 < ratio < 1.2, ratio


def test_fsdp_splits_memory_and_work(sft_plans):
    one, fsdp = sft_plans
    assert fsdp.mesh == {"data": 1, "fsdp": 8, "tensor": 1} and not fsdp.notes
    assert fsdp.num_params == one.num_params > 100_000
    step_one, step_fsdp = one.programs[0], fsdp.programs[0]
    assert fsdp.state_bytes < one.state_bytes / 6  # a few small vectors stay replicated
    assert step_fsdp.argument_bytes < step_one.argument_bytes  # (packed image patches are replicated)
    assert step_fsdp.hardware_flops < step_one.hardware_flops / 6
    # Summed over devices the work is the same, up to what runs replicated (parts of the vision tower
    # before its tokens are split) and the sharded program's extra reshuffles.
    assert one.hardware_flops_per_step <= fsdp.hardware_flops_per_step < 1.15 * one.hardware_flops_per_step
    assert fsdp.flops_per_step == pytest.approx(one.flops_per_step, rel=1e-9)  # model FLOPs ignore the mesh
    assert sum(step_fsdp.collective_bytes.values()) > 0 and not step_one.collective_bytes
    utilisation = fsdp.utilisation(step_seconds=2.0, peak_flops_per_device=1e12)
    assert utilisation["mfu"] == pytest.approx(fsdp.flops_per_step / (2.0 * 8 * 1e12))


def test_batches_that_do_not_split_are_errors_or_flagged():
    with pytest.raises(ValueError, match="not a multiple"):
        planning._micro_rows(16, 5)
    assert planning._batch_split_note(8, make_mesh({"fsdp": 8}), "sft step") == []
    notes = planning._batch_split_note(4, make_mesh({"fsdp": 8}), "sft step")  # 4 rows over 8 devices
    assert len(notes) == 1 and "REPLICATED" in notes[0]


def test_completion_window_steps_add_up_to_every_decode_step():
    assert completion_window_steps(128, completion_windows(128)) == (32, 32, 63)
    assert completion_window_steps(1024, completion_windows(1024)) == (256, 256, 511)
    assert completion_window_steps(48, completion_windows(48)) == (47,)
    assert completion_window_steps(1, (1,)) == (0,)
    for new_tokens in (2, 31, 64, 100, 129, 1000):
        assert sum(completion_window_steps(new_tokens, completion_windows(new_tokens))) == new_tokens - 1


def _tiny_grpo_config(max_new_tokens):
    c = grpo_config.get_config("demo")
    c.model.preset = "tiny"
    c.model.checkpoint = ""  # a fresh, smaller model
    c.model.preset_overrides = json.dumps({"text_config": {"num_hidden_layers": 1}, "vision_config": {"depth": 2}})
    c.data.max_prompt_tokens = 32
    c.data.min_pixels = c.data.max_pixels = 56 * 56
    c.grpo.prompts_per_step, c.grpo.num_generations, c.grpo.max_new_tokens = 2, 2, max_new_tokens
    return c


def test_grpo_plan_counts_every_completion_window():
    """128 new tokens open all three completion windows (32, 64, 128 slots): one decode loop each, each
    counted at its own steps, so the HLO and jaxpr counts of the decode still agree."""
    config = _tiny_grpo_config(128)
    plan = planning.plan_grpo(config, make_mesh({"data": 1}, devices=jax.devices()[:1]))
    assert plan.shapes["completion_windows"] == [32, 64, 128]
    decode = {p.name: p for p in plan.programs}["rollout_decode"]
    assert [p.name for p in plan.programs] == ["rollout_prefill", "rollout_decode", "policy_log_probs", "grpo_step"]
    # Independent counters, one trip count per loop: a window counted at another's steps would part them
    # (a step attends all its window's slots, so the windows' steps cost different FLOPs).
    assert decode.hardware_flops == decode.model_flops > 0


def test_plan_launcher_plans_grpo_and_ends_with_json(tmp_path):
    """The real command line on a GRPO config (tiny overrides, 2 fake devices): rollout, reference
    log-probs and update all compile, and the last line is the JSON summary."""
    overrides = json.dumps({"text_config": {"num_hidden_layers": 1}, "vision_config": {"depth": 2}})
    flags = [f"--config={REPO}/configs/grpo.py", "--devices=2", "--stages=grpo", "--step_seconds=3",
             "--config.model.preset=tiny", f"--config.model.preset_overrides={overrides}",
             "--config.data.max_prompt_tokens=32", f"--config.data.min_pixels={56 * 56}",
             f"--config.data.max_pixels={56 * 56}", "--config.grpo.prompts_per_step=2",
             "--config.grpo.num_generations=2", "--config.grpo.max_new_tokens=8", "--config.mesh.data=1",
             "--config.mesh.fsdp=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", "plan.py"), *flags], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["stage"] == "grpo"
    assert result["per_device_bytes"] > 0 and result["flops_per_step"] > 0
    names = [p["name"] for p in result["stages"]["grpo"]["programs"]]
    assert names == ["rollout_prefill", "rollout_decode", "policy_log_probs", "grpo_step"]
    decode = result["stages"]["grpo"]["programs"][1]
    assert decode["model_flops"] > 0 and decode["hardware_flops"] > 0
    assert result["mfu"] == pytest.approx(result["flops_per_step"] / (3 * 2 * 312e12))


def test_plan_launcher_rejects_a_mesh_that_does_not_fit():
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", "plan.py"),
                           f"--config={REPO}/configs/sft.py", "--devices=3", "--config.mesh.fsdp=2",
                           "--config.mesh.data=1", "--config.model.preset=tiny"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "plan error" in done.stderr and "needs 2 devices, but 3" in done.stderr
