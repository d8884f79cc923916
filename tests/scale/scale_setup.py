"""What the scale tests share: the model, optimiser and synthetic batch shapes (imported by the
tests and by the multi-host worker processes)."""

from __future__ import annotations

import ml_collections

from facialr1_jax.models import get_preset, init_model
from facialr1_jax.parallel import TRAINING_RULES, activation_sharding
from facialr1_jax.parallel.planning import ExampleShape, compiler_options
from facialr1_jax.train import optim

# The tiny preset with one decoder layer and two vision blocks (one windowed, one full): every
# parameter kind and both attention paths, at a third of the tiny preset's compile time.
CONFIG = get_preset("tiny", text_config={"num_hidden_layers": 1}, vision_config={"depth": 2})
SFT_SHAPE = ExampleShape(sequence_tokens=40, target_tokens=12, image_grid=(1, 4, 4))
SFT_BATCH = dict(num_micro_batches=2, micro_batch_size=8, max_length=64)
PROMPT_SHAPE = ExampleShape(sequence_tokens=24, target_tokens=0, image_grid=(1, 4, 4))
GRPO_BATCH = dict(num_prompts=4, num_generations=4, completion_tokens=8, num_micro_batches=2)
MULTIHOST_MESH = {"fsdp": 2}
# Text only: the multi-host test is about processes, collectives and checkpoints (the vision tower's
# sharding is covered on 8 devices), and it compiles in three processes at once.
MULTIHOST_SFT_SHAPE = ExampleShape(sequence_tokens=40, target_tokens=12, image_grid=None)
MODEL_SEED = 5


def optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(lr=1e-3, schedule="constant", warmup_steps=0, end_lr_fraction=0.0, b1=0.9,
                                          b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))


def model_and_optimizer(mesh):
    """(model on `mesh` under TRAINING_RULES, optax transformation, schedule), float32."""
    tx, schedule = optim.make_optimizer(optimizer_config(), total_steps=10)
    return init_model(CONFIG, seed=MODEL_SEED, mesh=mesh, rules=TRAINING_RULES), tx, schedule


def aot_compile(train_step, state, batch):
    """The program `train_step(state, batch)` runs (same jit, shardings, donation and activation
    rules), compiled ahead of time without LLVM's optimisation passes: half the compile time, and
    both sides of every comparison are built the same way."""
    with activation_sharding(train_step.mesh, train_step.rules):
        lowered = train_step.compiled(batch).lower(state, batch)
    return lowered.compile(compiler_options=compiler_options())


class IdTokenizer:
    """Decodes ids as their numbers: multi-host tests compare generated token ids, not words."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


HELD_OUT_BATCH = dict(num_micro_batches=1, micro_batch_size=4, max_length=64)
GREEDY_SHAPE = ExampleShape(sequence_tokens=16, target_tokens=0, image_grid=None)


def held_out_host_batches() -> list[dict]:
    """Two held-out loss batches as `train.sft.held_out_batches` builds them: host numpy arrays."""
    from facialr1_jax.parallel.planning import synthetic_sft_batch

    return [synthetic_sft_batch(CONFIG, MULTIHOST_SFT_SHAPE, **HELD_OUT_BATCH, seed=100 + i) for i in range(2)]


def greedy_prompts():
    from facialr1_jax.parallel.planning import synthetic_prompts

    return synthetic_prompts(CONFIG, GREEDY_SHAPE, 3, seed=7)


def greedy_evaluator(mesh):
    """A `GreedyEvaluator` of 4 new tokens over batches of 4 prompts (the engine's ids as text)."""
    import types

    from facialr1_jax.train import evaluation

    return evaluation.GreedyEvaluator(evaluation.load_generate(), IdTokenizer(),
                                      types.SimpleNamespace(max_prompt_tokens=32), CONFIG, max_new_tokens=4,
                                      batch_size=4, mesh=mesh)
