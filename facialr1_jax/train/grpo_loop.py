"""Stage 2: GRPO with rewards computed inside jit (docs/METHOD.md section 7).

    python launch/train.py --config=configs/grpo.py --workdir=W

`run_grpo(config, workdir)`:
  1. start: `grpo.init_from`, else `model.checkpoint`, else WORKDIR/sft; when that holds no
     checkpoint yet, stage 1 runs there first with the nested `config.warm_start` SFT config;
  2. every rollout batch: `grpo.prompts_per_step` records from the "rl" split (seeded order,
     checkpointed), one prefill per prompt and `grpo.num_generations` samples from the shared
     KV cache (`facialr1_jax.sampling.Engine`), rewards on the sampled token ids in jit
     (`facialr1_jax.rewards`), group advantages, then `grpo.mu` policy updates of the clipped
     objective (+ beta * KL to the frozen initial policy; no reference copy is held when beta = 0);
  3. metrics per step (each reward's mean, accuracy, format rate, AU F1, KL, clip fraction, entropy
     estimate, completion length, share of groups with zero advantage), sample completions in the
     log and WORKDIR/samples.jsonl, checkpoints and exact resume as in SFT;
  4. a before/after table on the held-out test split (greedy decoding), in WORKDIR/grpo_result.json
     and grpo_report.md.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from facialr1_jax.data import batching, datasets, pipeline
from facialr1_jax.data.examples import EncodingConfig, encode_prompt_example
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax import config_validation
from facialr1_jax.parallel import TRAINING_RULES, files, to_host
from facialr1_jax.rewards import encode_ground_truth, make_reward_fn
from facialr1_jax.rewards import terms as terms_lib
from facialr1_jax.sampling import Engine
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train import evaluation, forward, grpo, loop, optim, sft
from facialr1_jax.train import state as state_lib
from facialr1_jax.train import step as step_lib
from facialr1_jax.train.grpo_batch import PromptCycler, reference_think_token_mask, think_token_mask, training_batch
from facialr1_jax.train.metrics import MetricsLogger, StepJsonl

_log = logging.getLogger(__name__)

RESULT_FILE = "grpo_result.json"
REPORT_FILE = "grpo_report.md"
BEFORE_FILE = "grpo_eval_before.json"
SAMPLES_FILE = "samples.jsonl"
TABLE_METRICS = ("format_valid", "emotion_accuracy", "au_f1_micro", "au_f1_macro", "rouge_l")


# ------------------------------------------------------------------------------------ start-up
def resolve_initial_checkpoint(config: Any, workdir: str) -> str:
    """The checkpoint GRPO starts from; trains stage 1 into WORKDIR/sft first when needed."""
    explicit = config.grpo.init_from or config.model.checkpoint
    if explicit:
        return explicit
    sft_dir = os.path.join(workdir, "sft")
    try:
        checkpoint_lib.resolve_checkpoint(sft_dir)
        _log.info("GRPO starts from the SFT run in %s", sft_dir)
        return sft_dir
    except (FileNotFoundError, ValueError):
        pass
    _log.warning("no SFT checkpoint in %s: running stage 1 (config.warm_start) there first", sft_dir)
    print(f"GRPO: no SFT checkpoint in {sft_dir}; running stage 1 (SFT) there first.", flush=True)
    result = sft.run_sft(config.warm_start, sft_dir)
    if result["status"] != "completed":
        raise RuntimeError(f"the SFT warm start stopped early ({result['status']}); rerun to resume it")
    return sft_dir


def _with_checkpoint(config: Any, checkpoint: str) -> Any:
    """A copy of `config` whose model section loads `checkpoint` (the model's own preset and tokenizer)."""
    loaded = copy.deepcopy(config)
    with loaded.unlocked():
        loaded.model.checkpoint = checkpoint
    return loaded


def reward_functions(config: Any) -> tuple[int, int]:
    """(reward functions over all completion tokens, reward functions over think tokens) of
    `grpo.loss_variant = "facial_r1_code"`: every reward term with a non-zero weight is one function
    (the reference's three: accuracy, format, AU); the AU term is the one on think tokens."""
    settings = terms_lib.settings_from_config(config.rewards)
    active = [name for name, weight in settings.weights.items() if weight != 0.0]
    think = int("au" in active)
    return len(active) - think, think


def _loss_settings(config: Any) -> dict:
    g = config.grpo
    common = dict(eps_low=float(g.eps_low), eps_high=float(g.eps_high), beta=float(g.beta),
                  kl_estimator=g.kl_estimator)
    if g.get("loss_variant", "standard") == "facial_r1_code":
        num_full, num_think = reward_functions(config)
        return dict(common, variant="facial_r1_code", num_full_terms=num_full, num_think_terms=num_think)
    return dict(common, variant="standard", aggregation=g.aggregation, ratio_level=g.ratio_level,
                max_length=int(g.max_new_tokens))


def make_grpo_loss(settings: dict, *, use_stored_old_log_probs: bool):
    """The loss_fn of `step.TrainStep` for GRPO micro-batches (see `grpo_batch.training_batch`).

    settings: `_loss_settings` (its "variant" picks `grpo.grpo_loss_terms` or, for "facial_r1_code",
    `grpo.reward_function_loss_terms`, which reads the batch's `think_mask` and `sample_weights`)."""
    settings = dict(settings)
    variant = settings.pop("variant", "standard")

    def grpo_loss(model, micro_batch: dict, rng: jax.Array):
        del rng
        completion_mask = micro_batch["completion_mask"]
        log_probs = forward.completion_log_probs(model, micro_batch, completion_mask.shape[1])
        # mu = 1: the policy that sampled is the one being updated, so the ratio is 1 in value.
        old = micro_batch["old_log_probs"] if use_stored_old_log_probs else jax.lax.stop_gradient(log_probs)
        if variant == "facial_r1_code":
            terms = grpo.reward_function_loss_terms(
                log_probs, old, micro_batch.get("ref_log_probs"), micro_batch["advantages"], completion_mask,
                micro_batch["think_mask"], micro_batch["sample_weights"], **settings)
        else:
            terms = grpo.grpo_loss_terms(log_probs, old, micro_batch.get("ref_log_probs"),
                                         micro_batch["advantages"], completion_mask, **settings)
        tokens = completion_mask.sum()
        extras = {
            "kl_sum": terms.kl_sum,
            "clip_fraction_sum": terms.clip_fraction_sum,
            "neg_log_prob_sum": -(jax.lax.stop_gradient(log_probs) * completion_mask).sum(),
            "completion_tokens": tokens,
        }
        return terms.loss_sum, terms.denominator, extras

    return grpo_loss


def make_log_prob_fn(model_def: state_lib.ModelDef, params_shardings: Any, mesh, num_completion_tokens: int, *,
                     compiler_options: str | dict | None = "auto"):
    """jitted (params, batch) -> [num_micro, rows, T] log-probs of the completion tokens; `.program(batch)`
    is the jitted function for that batch structure (what the planner compiles). compiler_options as
    in `step.TrainStep`."""
    options = step_lib.resolve_compiler_options(compiler_options, mesh)

    def per_micro(params, micro):
        model = model_def.merge(params)
        return forward.completion_log_probs(model, micro, num_completion_tokens)

    def fn(params, batch):
        return jax.lax.map(lambda micro: per_micro(params, micro), batch)

    compiled: dict = {}

    def program(batch):
        """The jitted program for this batch's structure (built on first use; the planner compiles it)."""
        key = step_lib._batch_signature(batch)
        if key not in compiled:
            compiled[key] = jax.jit(fn, in_shardings=(params_shardings, step_lib.batch_shardings(batch, mesh)),
                                    compiler_options=options)
        return compiled[key]

    def call(params, batch):
        return program(batch)(params, batch)

    call.program = program
    return call


def rollout_batches(config: Any, num_records: int) -> int:
    """Rollout batches of the run: `grpo.num_steps`, or with `grpo.num_epochs` > 0 enough batches of
    `grpo.prompts_per_step` prompts to pass over the `num_records` stage 2 records that many times
    (rounded up; the reference trains one epoch)."""
    g = config.grpo
    epochs = float(g.get("num_epochs", 0.0))
    if epochs <= 0:
        return int(g.num_steps)
    return max(1, math.ceil(epochs * num_records / int(g.prompts_per_step)))


# ------------------------------------------------------------------------------------ the run
class RolloutStats:
    """Host-side statistics of the rollouts since the last logged row."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def pop_means(self) -> dict:
        if not self.rows:
            return {}
        means = {}
        for key in self.rows[-1]:
            values = np.array([row[key] for row in self.rows], np.float64)
            # A statistic with no rows to average (e.g. AU F1 over a batch without AU labels) stays NaN.
            means[key] = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")
        self.rows = []
        return means


def _rollout_statistics(rewards: dict, records, num_generations: int, lengths: np.ndarray,
                        policy_log_probs: np.ndarray, mask: np.ndarray, advantages: np.ndarray) -> dict:
    rows_records = [record for record in records for _ in range(num_generations)]
    has_label = np.array([bool(r.label) for r in rows_records])
    has_aus = np.array([bool(r.aus) for r in rows_records])
    predicted = rewards["au_predicted"].astype(np.float64)
    matched = rewards["au_matched"].astype(np.float64)
    truth = rewards["au_truth"].astype(np.float64)
    au_f1 = np.where(predicted + truth > 0, 2 * matched / np.maximum(predicted + truth, 1), 0.0)
    grouped = rewards["total"].reshape(-1, num_generations)
    stats = {
        "reward_total": float(rewards["total"].mean()),
        "reward_format": float(rewards["format"].mean()),
        "reward_accuracy": float(rewards["accuracy"].mean()),
        "reward_au": float(rewards["au"].mean()),
        "format_rate": float((rewards["format"] > 0.5).mean()),
        "accuracy": float(rewards["accuracy"][has_label].mean()) if has_label.any() else float("nan"),
        "au_f1": float(au_f1[has_aus].mean()) if has_aus.any() else float("nan"),
        "completion_length": float(lengths.mean()),
        "zero_advantage_groups": float((grouped.std(axis=1) == 0).mean()),
        "entropy_estimate": float(-(policy_log_probs * mask).sum() / max(mask.sum(), 1.0)),
        "advantage_abs": float(np.abs(advantages).mean()),
    }
    return stats


def run_grpo(config: Any, workdir: str) -> dict:
    """Runs stage 2 into `workdir` (resuming from it when it holds a checkpoint)."""
    start_time = time.time()
    workdir = files.makedirs(workdir)  # a local folder (made absolute) or a URL such as gs://bucket/run
    is_main = jax.process_index() == 0
    g = config.grpo
    num_generations, prompts_per_step, mu = int(g.num_generations), int(g.prompts_per_step), int(g.mu)
    rows = num_generations * prompts_per_step
    micro_rows = int(g.micro_batch_size) or rows
    if rows % micro_rows:
        raise ValueError(f"grpo.micro_batch_size = {micro_rows} does not divide the {rows} completions per step")
    num_micro = rows // micro_rows

    initial = resolve_initial_checkpoint(config, workdir)
    run_config = _with_checkpoint(config, initial)
    mesh = sft.mesh_from_config(run_config)
    config_validation.check_batch_split(run_config, dict(mesh.shape))
    model, tokenizer, model_meta = sft.build_model(run_config, mesh)
    model_config = model.config
    encoding = EncodingConfig.from_config(run_config)
    pad_id = pipeline.pad_id_of(tokenizer)

    rl_split = datasets.load_split(run_config, "rl", workdir=workdir)
    test_split = datasets.load_split(run_config, "test", workdir=workdir)
    num_steps = rollout_batches(config, len(rl_split))
    _log.info("GRPO: %d prompts, %d held-out; %d steps of %d prompts x %d samples, mu = %d",
              len(rl_split), len(test_split), num_steps, prompts_per_step, num_generations, mu)

    total_updates = num_steps * mu
    tx, schedule = optim.make_optimizer(config.optimizer, max(total_updates, 1))
    model_def, state, state_shardings = state_lib.create_train_state(model, tx, seed=int(config.seed), mesh=mesh)
    del model
    # Sampling and log-prob programs are forward only: built without remat (step_lib.forward_only).
    forward_def = step_lib.forward_only(model_def, state.params)
    engine = Engine(forward_def.graphdef, model_config, mesh=mesh)
    loss_settings = _loss_settings(config)
    train_step = step_lib.TrainStep(model_def, make_grpo_loss(loss_settings, use_stored_old_log_probs=mu > 1),
                                    tx, schedule, state_shardings, mesh, rules=TRAINING_RULES)
    log_prob_fn = make_log_prob_fn(forward_def, state_shardings.params, mesh, int(g.max_new_tokens))
    # The frozen reference policy: the initial parameters (only held when the KL term is on).
    reference_params = jax.tree.map(jnp.copy, state.params) if float(g.beta) > 0 else None
    reward_fn = make_reward_fn(tokenizer, EMOTIONS, config.rewards)
    generator = evaluation.GreedyEvaluator.create(tokenizer, encoding, model_config,
                                                  max_new_tokens=int(g.max_new_tokens),
                                                  batch_size=int(g.eval_batch_size), mesh=mesh)

    cycler = PromptCycler(len(rl_split), seed=int(config.seed), shuffle=bool(config.data.shuffle))
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                               async_save=bool(config.checkpoint.async_save))
    latest = checkpointer.latest_step()
    if latest is not None:
        restored = checkpointer.restore(latest, state, state_shardings)
        state = restored.state
        if restored.data_state is not None:
            cycler.set_state(restored.data_state)
        if reference_params is not None:
            # The reference is the policy GRPO started from: reload it from the initial checkpoint.
            reference_model, _, _ = sft.build_model(run_config, mesh)
            reference_params = state_lib.split_model(reference_model)[1]
            del reference_model
        _log.info("resumed GRPO from %s at step %d", checkpointer.directory, restored.step)

    # -------- the before table (computed once; a resumed run reads it back)
    before_path = os.path.join(workdir, BEFORE_FILE)
    eval_count = int(g.eval_num_examples)
    if generator is not None and files.exists(before_path):
        before = json.loads(files.read_text(before_path))
    elif generator is not None:
        before = generator.evaluate(model_def.merge(state.params), test_split, num_examples=eval_count)
        if is_main:
            files.write_text(before_path, json.dumps(before, indent=2))
    else:
        before = {}

    start_step = int(jax.device_get(state.step))
    logger = MetricsLogger(workdir, total_steps=total_updates, start_step=start_step, enabled=is_main,
                           tensorboard=bool(config.logging.tensorboard),
                           progress_bar=bool(config.logging.progress_bar))
    samples_log = StepJsonl(os.path.join(workdir, SAMPLES_FILE), start_step) if is_main else None
    stats = RolloutStats()
    cached: dict = {}
    run_meta = {**model_meta, "stage": "grpo", "initial_checkpoint": initial,
                "config": json.loads(config.to_json_best_effort())}

    def rollout(current_state) -> tuple[dict, dict]:
        rollout_index = int(jax.device_get(current_state.step)) // mu
        indices = cycler.take(prompts_per_step)
        elements = [rl_split.source[i] for i in indices]
        prompts = [encode_prompt_example(e["record"], tokenizer, encoding, images=pipeline.element_images(e))
                   for e in elements]
        records = [p.record for p in prompts]
        collated = batching.collate_prompts(prompts, model_config, pad_id=pad_id,
                                            max_length=encoding.max_prompt_tokens)
        key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), rollout_index)
        # Resharded once per rollout for sampling (a no-op on one device), not gathered per decode step.
        out = engine.generate((engine.place_params(current_state.params), model_def.frozen), collated,
                              max_new_tokens=int(g.max_new_tokens), num_samples=num_generations,
                              temperature=float(g.temperature), top_k=int(g.top_k), top_p=float(g.top_p), rng=key)
        tokens, mask, lengths, policy_log_probs = to_host(
            (out.tokens, out.mask, out.lengths, out.policy_log_probs))  # gathered from every host
        label_ids = np.array([EMOTIONS.index(r.label) if r.label in EMOTIONS else -1 for r in records], np.int32)
        au_truth = encode_ground_truth([r.aus for r in records])
        rewards = reward_fn(out.tokens, out.mask > 0, jnp.repeat(jnp.asarray(label_ids), num_generations),
                            jnp.repeat(jnp.asarray(au_truth), num_generations, axis=0))
        rewards = to_host(dict(rewards))
        total = jnp.asarray(rewards["total"])
        scale, eps = g.advantage, float(g.advantage_eps)
        if g.au_think_only:
            au_part = float(config.rewards.au_weight) * jnp.asarray(rewards["au"])
            rest = np.asarray(grpo.group_advantages(total - au_part, num_generations, scale, eps))
            au_adv = np.asarray(grpo.group_advantages(au_part, num_generations, scale, eps))
            think = think_token_mask(reward_fn.byte_table, tokens, mask)
            advantages = rest[:, None] + au_adv[:, None] * think
        else:
            advantages = np.asarray(grpo.group_advantages(total, num_generations, scale, eps))
        reference_loss = {}
        if loss_settings["variant"] == "facial_r1_code":
            # The authors' objective: the AU term's tokens and each completion's record weight.
            reference_loss = dict(
                think_mask=reference_think_token_mask(reward_fn.byte_table, tokens, mask),
                sample_weights=np.repeat(np.array([r.weights for r in records], np.float32), num_generations))
        batch = training_batch(collated, [p.pixel_values for p in prompts], [p.image_grid_thw for p in prompts],
                               tokens, mask, advantages, num_generations=num_generations,
                               num_micro_batches=num_micro, model_config=model_config, pad_id=pad_id,
                               share_prompts=bool(g.share_prompts), **reference_loss)
        batch_shardings = step_lib.batch_shardings(batch, mesh)
        device_batch = step_lib.put_batch(batch, batch_shardings)
        if mu > 1:
            device_batch["old_log_probs"] = log_prob_fn(current_state.params, device_batch)
        if reference_params is not None:
            device_batch["ref_log_probs"] = log_prob_fn(reference_params, device_batch)
        stats.add(_rollout_statistics(rewards, records, num_generations, lengths,
                                      policy_log_probs, mask, np.asarray(advantages)))
        if samples_log is not None:
            shown = []
            for row in range(min(int(g.log_samples), tokens.shape[0])):
                text = tokenizer.decode(tokens[row, : lengths[row]].tolist(), skip_special_tokens=True)
                record = records[row // num_generations]
                shown.append({"id": record.id, "label": record.label, "aus": list(record.aus), "completion": text,
                              "reward": {k: float(rewards[k][row]) for k in ("format", "accuracy", "au", "total")}})
            samples_log.write({"step": rollout_index * mu + 1, "samples": shown})
            if shown:
                _log.info("sample (%s, label %s, AUs %s, reward %.2f): %r", shown[0]["id"], shown[0]["label"],
                          "+".join(shown[0]["aus"]) or "-", shown[0]["reward"]["total"], shown[0]["completion"][:300])
        info = {"tokens": int(mask.sum()), "ids": [r.id for r in records]}
        return device_batch, info

    def next_batch(current_state):
        step = int(jax.device_get(current_state.step))
        if step % mu == 0 or "batch" not in cached:
            cached["batch"] = rollout(current_state)
        return cached["batch"]

    def postprocess(row: dict) -> dict:
        denominator = max(row.get("denominator", 0.0), 1e-9)
        row = dict(row)
        for name in ("kl", "clip_fraction"):
            if f"{name}_sum" in row:
                row[name] = row.pop(f"{name}_sum") / denominator
        if "neg_log_prob_sum" in row:
            row["neg_log_prob"] = row.pop("neg_log_prob_sum") / max(row.get("completion_tokens", 0.0), 1.0)
        row.update(stats.pop_means())
        return row

    def evaluate(current_state, step: int) -> dict:
        if generator is None:
            return {}
        return generator.evaluate(model_def.merge(current_state.params), test_split, num_examples=eval_count)

    with loop.PreemptionGuard() as guard:
        outcome = loop.run_loop(
            state, train_step, next_batch, total_steps=total_updates, checkpointer=checkpointer,
            checkpoint_every=int(config.checkpoint.every_steps), meta=run_meta, logger=logger,
            log_every=int(config.logging.every_steps), data_state=cycler.get_state,
            evaluate=evaluate if int(g.eval_every_steps) else None, eval_every=int(g.eval_every_steps),
            guard=guard, postprocess=postprocess, evaluate_at_end=False,
        )
        after = {}
        if outcome.status == "completed" and generator is not None:
            after = generator.evaluate(
                model_def.merge(outcome.state.params), test_split, num_examples=eval_count,
                predictions_path=os.path.join(workdir, "predictions-test.jsonl") if is_main else None)
            logger.write(outcome.step, after, split="eval")
    checkpointer.close()
    curve = logger.close()
    if samples_log is not None:
        samples_log.close()

    result = {
        "status": outcome.status,
        "step": outcome.step,
        "total_steps": total_updates,
        "initial_checkpoint": initial,
        "before": before,
        "after": after,
        "final_train": outcome.last_metrics,
        "loss_curve": curve,
        "checkpoint": os.path.join(checkpointer.directory, str(outcome.step)),
        "wall_seconds": round(time.time() - start_time, 1),
    }
    if is_main:
        files.write_text(os.path.join(workdir, RESULT_FILE), json.dumps(result, indent=2))
        if after:
            table = before_after_table(before, after, num_examples=eval_count)
            files.write_text(os.path.join(workdir, REPORT_FILE),
                             f"# GRPO before/after on the held-out test split\n\n{table}\n")
            print(table, flush=True)
    return result


def before_after_table(before: dict, after: dict, *, num_examples: int) -> str:
    """Markdown table of the greedy test metrics before (SFT) and after GRPO."""
    lines = [f"| metric (greedy, {before.get('generated_examples', num_examples)} test records) "
             "| SFT (before) | GRPO (after) | change |", "|---|---|---|---|"]
    for name in TABLE_METRICS:
        if name in before and name in after:
            lines.append(f"| {name} | {before[name]:.4f} | {after[name]:.4f} | {after[name] - before[name]:+.4f} |")
    return "\n".join(lines)
