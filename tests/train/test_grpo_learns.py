"""GRPO improves the reward it is given: a bandit run through the real stage 2 pieces.

A freshly initialised `tiny` model answers three image prompts. Its 256-token vocabulary is read by
the real jitted reward function through a byte table in which every ordinary token is one whole
well-formed answer, "<think>.</think><answer>EMOTION</answer>", cycling through the eight emotions,
so a completion's accuracy reward is 1 exactly when its last answer token names the label (about
1/8 of the vocabulary). Each step is stage 2 as `run_grpo` composes it:

    Engine rollouts (one prefill per prompt, G samples fanned out from its KV cache)
    -> jitted rewards on the sampled ids -> group advantages -> `training_batch`
    -> old log-probs (`make_log_prob_fn`) -> mu = 2 updates of the clipped objective (`TrainStep`)

The policy's accuracy on every prompt, estimated from many samples with a fixed evaluation key
before and after, must rise far above its sampling noise; the same run with the advantages' sign
flipped (the control) must fall, so the test fails if the update ignores or inverts the advantage,
or if advantages reach other rows' tokens (then no prompt's answer is reinforced consistently).

All prompts share one label. With a different label per prompt, a random 2-layer model barely
conditions its third token on the prompt, so reinforcing one prompt's answer raises it for all and
the other prompts collapse to a wrong answer whose groups then have zero advantage (measured at
lr 3e-2: per-prompt accuracy [0.16, 0.16, 0.13] -> [0.00, 0.00, 1.00] after 30 steps): a real
GRPO dynamic, but not what this test is about.
"""

import jax
import ml_collections
import numpy as np
import pytest

from configs import base
from facialr1_jax.data import batching
from facialr1_jax.data.examples import PromptExample
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.models import get_preset, init_model
from facialr1_jax.parallel import make_mesh
from facialr1_jax.rewards import TokenByteTable, make_reward_fn
from facialr1_jax.sampling import Engine
from facialr1_jax.train import grpo, grpo_loop, optim
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.grpo_batch import training_batch

NUM_GENERATIONS = 8
MAX_NEW_TOKENS = 3
MU = 2
LABEL = "happiness"
# Patch grids (t, h, w) of the three prompts' images: 4, 4 and 8 merged image tokens.
GRIDS = ((1, 4, 4), (1, 4, 4), (1, 8, 4))


def _answer_byte_table(config) -> TokenByteTable:
    """Special ids (pad, bos, eos, vision markers: 0..11) decode to nothing; token t >= 12 is a whole
    answer naming EMOTIONS[t % 8]."""
    vocab = config.text_config.vocab_size
    pieces, special = [], []
    for token in range(vocab):
        if token < 12:
            pieces.append(b"")
            special.append(True)
        else:
            pieces.append(f"<think>.</think><answer>{EMOTIONS[token % len(EMOTIONS)]}</answer>".encode())
            special.append(False)
    return TokenByteTable.from_token_bytes(pieces, special)


def _prompts(config):
    """Three prompts: distinct text, an image of random patches, text (as the engine tests build them)."""
    rng = np.random.default_rng(3)
    examples = []
    for index, grid in enumerate(GRIDS):
        grid = np.asarray(grid, np.int64).reshape(1, 3)
        image_tokens = int(grid.prod()) // config.vision_config.merge_unit
        ids = ([20 + index, 40 + index, config.vision_start_token_id] + [config.image_token_id] * image_tokens
               + [config.vision_end_token_id, 60 + index])
        pixels = rng.standard_normal((int(grid.prod()), config.vision_config.patch_dim)).astype(np.float32)
        examples.append(PromptExample(id=f"p{index}", input_ids=np.asarray(ids, np.int32), pixel_values=pixels,
                                      image_grid_thw=grid, record=None, instruction=""))
    return examples


def _optimizer_config() -> ml_collections.ConfigDict:
    c = base.get_base_config().optimizer
    c.lr, c.warmup_steps, c.schedule, c.weight_decay = 1e-2, 0, "constant", 0.0
    return c


class _Bandit:
    """The model, prompts and compiled programs shared by the runs (each run starts from seed 0)."""

    def __init__(self):
        self.config = get_preset("tiny")
        self.mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        self.pad = self.config.text_config.pad_token_id
        self.examples = _prompts(self.config)
        self.collated = batching.collate_prompts(self.examples, self.config, pad_id=self.pad, max_length=64)
        self.reward_fn = make_reward_fn(_answer_byte_table(self.config), EMOTIONS)
        self.label_ids = np.full(len(self.examples), EMOTIONS.index(LABEL), np.int32)
        self.tx, self.schedule = optim.make_optimizer(_optimizer_config(), 1000)
        model_def, self.initial_state, self.shardings = state_lib.create_train_state(
            init_model(self.config, seed=0), self.tx, seed=0, mesh=self.mesh)
        self.model_def = model_def
        forward_def = step_lib.forward_only(model_def, self.initial_state.params)
        self.engine = Engine(forward_def.graphdef, self.config)
        settings = dict(eps_low=0.2, eps_high=0.2, beta=0.0, kl_estimator="k3", aggregation="seq_mean_token_mean",
                        ratio_level="token", max_length=MAX_NEW_TOKENS)
        self.train_step = step_lib.TrainStep(model_def, grpo_loop.make_grpo_loss(settings, use_stored_old_log_probs=True),
                                             self.tx, self.schedule, self.shardings, self.mesh, donate=False)
        self.log_prob_fn = grpo_loop.make_log_prob_fn(forward_def, self.shardings.params, self.mesh, MAX_NEW_TOKENS)

    def rollout(self, params, num_samples: int, key):
        out = self.engine.generate((params, self.model_def.frozen), self.collated, max_new_tokens=MAX_NEW_TOKENS,
                                   num_samples=num_samples, temperature=1.0, rng=key)
        rows = len(self.examples) * num_samples
        au_truth = np.zeros((rows, 100), bool)
        rewards = self.reward_fn(out.tokens, out.mask > 0, np.repeat(self.label_ids, num_samples), au_truth)
        return out, np.asarray(rewards["accuracy"])

    def accuracy(self, params) -> np.ndarray:
        """Per prompt: mean accuracy reward of 256 samples drawn with a fixed key (std 0.021 at p = 1/8)."""
        _, accuracy = self.rollout(params, 256, jax.random.PRNGKey(12345))
        return accuracy.reshape(len(self.examples), 256).mean(axis=1)

    def train(self, num_steps: int, advantage_sign: float):
        """(final state, clip fraction of every update) after `num_steps` rollouts of mu updates."""
        state, clip_fractions = self.initial_state, []
        for step in range(num_steps):
            out, accuracy = self.rollout(state.params, NUM_GENERATIONS, jax.random.PRNGKey(step))
            advantages = advantage_sign * np.asarray(grpo.group_advantages(accuracy, NUM_GENERATIONS))
            batch = training_batch(self.collated, [e.pixel_values for e in self.examples],
                                   [e.image_grid_thw for e in self.examples], np.asarray(out.tokens),
                                   np.asarray(out.mask), advantages, num_generations=NUM_GENERATIONS,
                                   num_micro_batches=2, model_config=self.config, pad_id=self.pad)
            batch = step_lib.put_batch(batch, step_lib.batch_shardings(batch, self.mesh))
            batch["old_log_probs"] = self.log_prob_fn(state.params, batch)
            for _ in range(MU):
                state, metrics = self.train_step(state, batch)
                clip_fractions.append(float(metrics["clip_fraction_sum"] / metrics["denominator"]))
        return state, clip_fractions


@pytest.fixture(scope="module")
def bandit():
    return _Bandit()


def test_grpo_raises_the_accuracy_reward_and_the_flipped_advantage_lowers_it(bandit):
    before = bandit.accuracy(bandit.initial_state.params)
    assert np.all((0.05 < before) & (before < 0.25)), before  # about 1/8: eight emotions share the vocabulary

    trained, clip_fractions = bandit.train(num_steps=10, advantage_sign=1.0)
    after = bandit.accuracy(trained.params)
    flipped, _ = bandit.train(num_steps=10, advantage_sign=-1.0)
    after_flipped = bandit.accuracy(flipped.params)
    print(f"per-prompt accuracy before {before}, after GRPO {after}, after flipped-sign GRPO {after_flipped}")

    # Measured: about 0.13 -> 0.8 (10 steps) and -> 0.01 (flipped); the estimate's std is 0.021.
    assert np.all(after > before + 0.35), (before, after)
    assert np.all(after_flipped < before - 0.05), (before, after_flipped)
    # The second update of each rollout is off-policy against the stored old log-probs: the clip engages.
    assert clip_fractions[0] == 0.0 and max(clip_fractions[1::2]) > 0.05, clip_fractions
