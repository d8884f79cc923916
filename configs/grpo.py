"""Stage 2: GRPO with verifiable emotion, AU and format rewards (docs/METHOD.md sections 6 and 7).

Variants (`--config=configs/grpo.py:VARIANT`):
  demo (default)   built-in data and demo model; warm-started from WORKDIR/sft (run first if missing).
  qwen2_5_vl_3b / qwen2_5_vl_7b   the paper's recipe (G = 8, temperature 1 with top-k 50, beta 0.04, lr 1e-6).
  task_specific    the 7B recipe continued on one benchmark's training set (set grpo.init_from to the
                   general GRPO run and data.train_jsonl / eval_jsonl / image_root to the benchmark's files).
"""

import ml_collections

from configs import base
from configs import paper
from configs import sft as sft_config


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "grpo"
    # The complete stage 1 config of the warm start: when no checkpoint is given (grpo.init_from,
    # model.checkpoint) and WORKDIR/sft holds none, this SFT run trains there first.
    # Override its knobs as --config.warm_start.sft.num_steps=... etc.
    c.warm_start = sft_config.get_config("qwen2_5_vl_7b" if variant == "task_specific" else variant)
    c.warm_start.seed = c.get_ref("seed")  # --config.seed=N seeds the SFT warm start too

    c.grpo = ml_collections.ConfigDict()
    c.grpo.init_from = ""  # Checkpoint or workdir to start from; "" = WORKDIR/sft (trained first if absent).
    c.grpo.num_steps = 100  # Optimiser steps (each = one rollout batch x mu updates).
    # > 0: passes over the stage 2 records instead of num_steps (rollout batches = epochs x records /
    # prompts_per_step, rounded up; the reference trains 1 epoch). 0 = num_steps.
    c.grpo.num_epochs = 0.0
    c.grpo.prompts_per_step = 8  # Prompts (groups) per rollout batch.
    c.grpo.num_generations = 8  # G: completions sampled per prompt.
    c.grpo.micro_batch_size = 0  # Completions per forward/backward in the update; 0 = all at once.
    # Micro-batches of whole groups compute each prompt (and its image) once for its G completions in
    # the update and reference passes (same log-probs and gradients); False: one full sequence per row.
    c.grpo.share_prompts = True
    c.grpo.max_new_tokens = 128  # Completion length cap.
    c.grpo.temperature = 1.0  # Sampling temperature of the rollouts.
    c.grpo.top_k = 0  # Top-k filter for rollouts (0 = off).
    c.grpo.top_p = 1.0  # Nucleus filter for rollouts (1 = off).
    c.grpo.mu = 1  # Policy updates per rollout batch (ratio = 1 in value when mu = 1).
    c.grpo.eps_low = 0.2  # Lower clip: ratio >= 1 - eps_low.
    c.grpo.eps_high = 0.2  # Upper clip: ratio <= 1 + eps_high (DAPO raises it, e.g. 0.28).
    c.grpo.beta = 0.04  # KL weight to the frozen reference policy (0 = no reference model is held).
    c.grpo.kl_estimator = "k3"  # k3 (exp(r) - r - 1, the reference) | k1 (logp - ref_logp).
    c.grpo.aggregation = "seq_mean_token_mean"  # seq_mean_token_mean (reference) | token_mean (DAPO) | seq_mean_token_sum_norm (Dr.GRPO).
    c.grpo.advantage = "group"  # group ((r - mean) / (std + eps)) | mean_only (Dr.GRPO) | batch (std over the batch).
    c.grpo.advantage_eps = 1e-4  # Added to the group std.
    c.grpo.ratio_level = "token"  # token (GRPO) | sequence (GSPO: geometric-mean ratio per completion).
    c.grpo.au_think_only = False  # Apply the AU reward's advantage only to tokens inside <think> (reference variant).
    # standard (one clipped loss over all completion tokens, as configured above) | facial_r1_code (the
    # authors' trainer: one clipped loss per reward function, the AU one over the tokens inside
    # <think>...</think>, averaged, each completion times its record's `weights`; needs token ratios,
    # seq_mean_token_mean and au_think_only = False; docs/METHOD.md 7.6).
    c.grpo.loss_variant = "standard"
    c.grpo.eval_every_steps = 0  # Greedy evaluation on the held-out split every N steps; 0 = only before and after.
    c.grpo.eval_num_examples = 0  # Held-out examples in the before/after table (0 = the whole test split).
    c.grpo.eval_batch_size = 32  # Prompts per greedy generation batch in the evaluations.
    c.grpo.log_samples = 2  # Sample completions written to the log at each logging step.

    c.rewards = ml_collections.ConfigDict()
    c.rewards.format_weight = 1.0  # Weight of R_format (whole completion is <think>..</think><answer>..</answer>).
    c.rewards.accuracy_weight = 1.0  # Weight of R_acc (last <answer> equals labels[0]).
    c.rewards.au_weight = 1.0  # Weight of R_AU (F1 of AUs named in the first <think>).
    c.rewards.accuracy_mode = "normalized"  # normalized (case, punctuation, synonyms) | exact (reference code).
    c.rewards.au_mode = "2f1-1"  # 2f1-1 (reference code, in [-1, 1]) | f1 (paper text, in [0, 1]).
    c.rewards.clamp = 10.0  # The summed reward is clamped to [-clamp, clamp].
    c.rewards.length_weight = 0.0  # Optional penalty per completion token over length_target (0 = off).
    c.rewards.length_target = 0  # Completion length above which length_weight applies.
    c.rewards.repetition_weight = 0.0  # Optional penalty on repeated n-grams (0 = off).

    _apply_variant(c, variant)
    return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
    if variant == "demo":
        c.data.source = "builtin"
        # Tuned on the demo's SFT model (held-out accuracy and AU F1 before/after, several settings of
        # lr, temperature and AU weight; docs/benchmarks.md names the runs): a small policy's samples at
        # temperature 1 are far worse than its greedy answers, so the rollouts sample cooler, and a small
        # lr keeps the greedy answers from drifting.
        c.optimizer.lr = 2e-5
        c.optimizer.warmup_steps = 5
        c.optimizer.schedule = "constant"
        c.optimizer.vision_lr_scale = 0.0  # demo-base's tower stays as stage 0 left it (configs/sft.py)
        c.grpo.temperature = 0.7
        c.rewards.au_weight = 2.0
        c.grpo.num_steps = 32
    elif variant in paper.PRESETS or variant == "task_specific":
        paper.apply_model(c, "qwen2_5_vl_7b" if variant == "task_specific" else variant)  # float32 master weights
        paper.apply_data(c)  # the reference's pixel cap: lower data.max_pixels to bound memory
        paper.apply_fsdp(c)
        c.optimizer.lr = 1e-6
        c.optimizer.warmup_steps = 0
        c.optimizer.schedule = "constant"
        c.grpo.num_steps = 1000
        c.grpo.prompts_per_step = 16
        # 128 completions per step in 8 micro-batches of 16: an even split over 8 or 16 devices.
        c.grpo.micro_batch_size = 16
        c.grpo.max_new_tokens = 1024
        # The reference samples with transformers' generate (do_sample, temperature 1), whose default
        # top-k 50 applies.
        c.grpo.top_k = 50
        if variant == "task_specific":
            _task_specific(c)
    else:
        raise ValueError(f"configs/grpo.py: unknown variant {variant!r} "
                         "(known: demo, qwen2_5_vl_3b, qwen2_5_vl_7b, task_specific)")


def _task_specific(c: ml_collections.ConfigDict) -> None:
    """The authors' third step: GRPO continued on one benchmark's training set (their README: 10
    iterations on e.g. RAF-DB, about 240 h on 8 A800s), from the general GRPO model. Set
    grpo.init_from (the general run's workdir or checkpoint), data.train_jsonl / data.eval_jsonl
    (the benchmark's training and test files) and data.image_root; the prompt lists that benchmark's
    labels (the records' `dataset`, docs/METHOD.md 2.4)."""
    c.grpo.num_epochs = 10.0  # "10 iterations", read as 10 passes over the benchmark's training set
    # The model to continue: the general GRPO run (no SFT warm start runs, so warm_start is not checked).
    c.grpo.init_from = ""
