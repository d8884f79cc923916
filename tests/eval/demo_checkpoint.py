"""Test helper: a training workdir holding one checkpoint of an untrained demo-preset model.

It is written the way the training stages write theirs (`train.checkpoint.Checkpointer` with the
model meta and the run's config), so loading it exercises the path a real demo run takes: the
workdir's latest step, the bundled tokenizer, and the prompt encoding recorded in the run config.
"""

import json
import os


def write_demo_checkpoint(workdir: str, *, seed: int = 0, step: int = 5) -> str:
    import importlib
    import sys

    import jax
    import jax.numpy as jnp
    from flax import nnx

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from facialr1_jax import models
    from facialr1_jax.parallel import make_mesh
    from facialr1_jax.train import checkpoint as checkpoint_lib
    from facialr1_jax.train import optim
    from facialr1_jax.train import state as state_lib

    config = importlib.import_module("configs.sft").get_config("demo")
    model = models.Qwen2_5_VL(models.get_preset("demo"), rngs=nnx.Rngs(seed))
    # One device: orbax writes arrays replicated over the 8 fake test devices about 25x slower.
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx, _ = optim.make_optimizer(config.optimizer, total_steps=10)
    _, state, _ = state_lib.create_train_state(model, tx, seed=seed, mesh=mesh)
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    meta = {
        **checkpoint_lib.model_meta(model.config, preset="demo", dtype="float32", param_dtype="float32",
                                    tokenizer=""),
        "stage": "sft",
        "config": json.loads(config.to_json_best_effort()),
    }
    checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=False)
    checkpointer.save(state, meta=meta)
    checkpointer.close()
    return workdir

