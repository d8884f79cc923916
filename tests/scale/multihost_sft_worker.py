"""One process of the 2-process SFT + orbax checkpoint test (tests/scale/test_multihost.py).

Run with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set (one CPU device per
process). Joins the cluster through `parallel.initialize_if_multihost`; on a mesh that spans both
processes (parameters split over `fsdp`, so each process owns half of every sharded array) it first
evaluates the fresh model as `run_sft` does (held-out loss from host batches, greedy generation
gathered to every host), then trains the tiny preset for three SFT steps, checkpoints with the
project's orbax `Checkpointer` into a shared folder, takes a fourth step, restores the checkpoint
into fresh shardings, retakes the fourth step from the restored state, and prints one
`RESULT {json}` line.

Data: every process builds the same global batch (as `train.sft.run_sft` does) and hands it to
`train.step.put_batch`, which tells `jax.make_array_from_process_local_data` the GLOBAL shape, so
each device keeps exactly its own rows.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

from facialr1_jax.parallel import TRAINING_RULES, initialize_if_multihost, make_mesh
from facialr1_jax.parallel.planning import synthetic_sft_batch
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train import evaluation
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.metrics import MetricsLogger
from facialr1_jax.train.sft import sft_loss

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.scale import scale_setup  # noqa: E402  (shared with the test, which computes the 1-process reference)


def put_global_batch(batch: dict, mesh) -> dict:
    return step_lib.put_batch(batch, step_lib.batch_shardings(batch, mesh))


def evaluate_fresh_model(model_def, params, shardings, mesh) -> dict:
    """Held-out loss over host batches (EvalStep places them) and greedy token ids (as text)."""
    eval_step = step_lib.EvalStep(model_def, sft_loss, shardings.params, mesh, rules=TRAINING_RULES)
    held_out = evaluation.held_out_loss(eval_step, params, scale_setup.held_out_host_batches())
    evaluation.pad_id_of = lambda tokenizer: 0  # the test tokenizer has no pad token; the batches use 0
    texts = scale_setup.greedy_evaluator(mesh).generate_texts(model_def.merge(params), scale_setup.greedy_prompts())
    return {"held_out": held_out, "texts": texts}


def local_shards(tree) -> list[np.ndarray]:
    return [np.asarray(shard.data) for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards]


def main(workdir: str) -> None:
    info = initialize_if_multihost()
    if info.process_count != 2 or info.global_device_count != 2:
        raise SystemExit(f"expected 2 processes with one device each, got {info}")
    mesh = make_mesh(scale_setup.MULTIHOST_MESH)
    model, tx, schedule = scale_setup.model_and_optimizer(mesh)
    model_def, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    train_step = step_lib.TrainStep(model_def, sft_loss, tx, schedule, shardings, mesh, rules=TRAINING_RULES)
    batches = [synthetic_sft_batch(scale_setup.CONFIG, scale_setup.MULTIHOST_SFT_SHAPE, **scale_setup.SFT_BATCH,
                                   seed=seed) for seed in range(4)]
    logger = MetricsLogger(workdir, total_steps=4, enabled=info.is_main, tensorboard=False, progress_bar=False)

    fresh = evaluate_fresh_model(model_def, state.params, shardings, mesh)
    program = scale_setup.aot_compile(train_step, state, put_global_batch(batches[0], mesh))
    rows = []
    for step, batch in enumerate(batches[:3], start=1):
        state, metrics = program(state, put_global_batch(batch, mesh))
        metrics = jax.device_get(jax.block_until_ready(metrics))  # one program at a time across processes
        rows.append({k: float(metrics[k]) for k in ("loss", "grad_norm", "denominator")})
        logger.write(step, rows[-1])

    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=2, async_save=True)
    checkpointer.save(state, meta={"test": "multihost"}, data_state={"batches_seen": 3, "process": info.process_index})
    checkpointer.wait()
    saved_params = local_shards(state.params)

    state, metrics = program(state, put_global_batch(batches[3], mesh))
    continued = {k: float(v) for k, v in jax.device_get(jax.block_until_ready(metrics)).items()}
    logger.write(4, {k: continued[k] for k in ("loss", "grad_norm", "denominator")})
    logger.close(plot=False)

    restored = checkpointer.restore(3, target, shardings)
    checkpointer.close()
    restored_params = local_shards(restored.state.params)
    params_equal = len(saved_params) == len(restored_params) and all(
        np.array_equal(a, b) for a, b in zip(saved_params, restored_params))
    placement_kept = all(r.sharding == s for r, s in zip(jax.tree.leaves(restored.state.params),
                                                         jax.tree.leaves(shardings.params)))
    state, metrics = program(restored.state, put_global_batch(batches[3], mesh))
    resumed = {k: float(v) for k, v in jax.device_get(jax.block_until_ready(metrics)).items()}

    print("RESULT " + json.dumps({
        "process": info.process_index, "steps": rows, "continued": continued, "resumed": resumed,
        "restored_step": restored.step, "data_state": restored.data_state, "params_equal": params_equal,
        "placement_kept": placement_kept, "local_param_shards": len(saved_params), "fresh": fresh,
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
