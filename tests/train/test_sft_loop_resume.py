"""The step loop in-process: preempt at step k, resume from the checkpoint, same trajectory exactly.

A toy NNX model and a grain pipeline of token rows stand in for Qwen2.5-VL and the FEA pipeline,
so this runs in seconds; tests/train/test_sft_resume.py does the same through launch/train.py
with SIGTERM on the real stage (marked slow).
"""

import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from facialr1_jax.data import pipeline
from facialr1_jax.parallel import make_mesh
from facialr1_jax.train import checkpoint as ckpt
from facialr1_jax.train import loop, losses, optim
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.metrics import MetricsLogger, StepJsonl, read_jsonl_rows

VOCAB, LENGTH, RECORDS, BATCH, TOTAL = 24, 10, 12, 4, 9


class ToyLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, 16, rngs=rngs)
        self.out = nnx.Linear(16, VOCAB, rngs=rngs)

    def __call__(self, ids):
        return self.out(jnp.cumsum(self.embed(ids), axis=1) / 3.0)


def toy_loss(model, batch, rng):
    del rng
    return losses.masked_cross_entropy(model(batch["input_ids"]), batch["targets"], batch["loss_mask"])


def make_row(index):
    rs = np.random.RandomState(index)
    ids = rs.randint(0, VOCAB, LENGTH).astype(np.int32)
    mask = np.zeros(LENGTH, np.float32)
    mask[index % 5: LENGTH - 1] = 1.0
    return {"id": f"r{index}", "input_ids": ids, "targets": np.roll(ids, -1), "loss_mask": mask}


def collate(rows):
    arrays = {k: np.stack([r[k] for r in rows])[None] for k in ("input_ids", "targets", "loss_mask")}
    arrays["info"] = {"ids": [[r["id"] for r in rows]], "tokens": len(rows) * LENGTH}
    return arrays


def run(workdir, *, stop_at=None):
    """Trains to TOTAL steps in `workdir` (resuming when it holds a checkpoint); stops at `stop_at`."""
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    c = ml_collections.ConfigDict(dict(lr=5e-2, schedule="linear", warmup_steps=2, end_lr_fraction=0.0, b1=0.9,
                                       b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    tx, schedule = optim.make_optimizer(c, TOTAL)
    model_def, state, shardings = state_lib.create_train_state(ToyLM(nnx.Rngs(0)), tx, seed=0, mesh=mesh)
    train_step = step_lib.TrainStep(model_def, toy_loss, tx, schedule, shardings, mesh)
    dataset = (grain.MapDataset.range(RECORDS).seed(7).shuffle().repeat().map(make_row)
               .batch(BATCH, drop_remainder=True, batch_fn=collate))
    iterator = pipeline.make_iterator(dataset, num_threads=2)
    checkpointer = ckpt.Checkpointer(workdir, max_to_keep=1)
    if checkpointer.latest_step() is not None:
        restored = checkpointer.restore(checkpointer.latest_step(), state, shardings)
        state = restored.state
        iterator.set_state(restored.data_state)
    start = int(state.step)
    logger = MetricsLogger(workdir, total_steps=TOTAL, start_step=start, tensorboard=False, progress_bar=False)
    ids_log = StepJsonl(os.path.join(workdir, "batches.jsonl"), start)
    guard = loop.PreemptionGuard(signals=())

    def next_batch(_):
        batch = next(iterator)
        info = batch.pop("info")
        return batch, info

    def on_batch(index, info):
        ids_log.write({"step": index + 1, "ids": info["ids"][0]})
        if stop_at is not None and index + 1 == stop_at:
            guard.request()  # as SIGTERM would, while step `stop_at` is being computed

    outcome = loop.run_loop(state, train_step, next_batch, total_steps=TOTAL, checkpointer=checkpointer,
                            checkpoint_every=100, meta={"stage": "test"}, logger=logger, log_every=1,
                            data_state=iterator.get_state, guard=guard, on_batch=on_batch)
    checkpointer.close()
    logger.close(plot=False)
    ids_log.close()
    return outcome


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read_jsonl_rows(os.path.join(workdir, "metrics.jsonl"))]


def test_preempt_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    reference = run(str(tmp_path / "a"))
    assert reference.status == "completed" and reference.step == TOTAL

    first = run(str(tmp_path / "b"), stop_at=4)
    assert first.status == "preempted" and first.step == 4
    assert ckpt.Checkpointer(str(tmp_path / "b")).all_steps() == [4]
    second = run(str(tmp_path / "b"))
    assert second.status == "completed" and second.step == TOTAL

    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert [s for s, _ in _losses(tmp_path / "a")] == list(range(1, TOTAL + 1))
    batches_a = read_jsonl_rows(str(tmp_path / "a" / "batches.jsonl"))
    batches_b = read_jsonl_rows(str(tmp_path / "b" / "batches.jsonl"))
    assert batches_a == batches_b
    for x, y in zip(jax.tree.leaves(reference.state.params), jax.tree.leaves(second.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_after_a_crash_drops_rows_written_after_the_checkpoint(tmp_path):
    """A run killed without warning leaves metric rows past its last checkpoint; resuming rewrites them."""
    workdir = tmp_path / "c"
    run(str(workdir), stop_at=3)
    with open(workdir / "metrics.jsonl", "a") as stream:  # what a crash at step 5 would have left behind
        stream.write('{"step": 4, "split": "train", "loss": 123.0}\n{"step": 5, "split": "train", "loss": 9.0}\n')
    run(str(workdir))
    steps = [r["step"] for r in read_jsonl_rows(str(workdir / "metrics.jsonl"))]
    assert steps == list(range(1, TOTAL + 1))
    assert all(r["loss"] != 123.0 for r in read_jsonl_rows(str(workdir / "metrics.jsonl")))
