"""The GRPO objective as small pure functions (docs/METHOD.md section 7), selected by configuration.

Each function works on [batch, time] arrays of per-token log-probabilities of the sampled
completion tokens, with a [batch, time] completion mask (1 up to and including the first end-of-turn
token). Variants are arguments, not subclasses:

  advantages   group (GRPO: (r - mean) / (std + eps), unbiased std), mean_only (Dr.GRPO), batch
  ratio        token (GRPO) or sequence (GSPO: the length-normalised sequence ratio, per-token gradient)
  clipping     eps_low / eps_high (equal in GRPO; DAPO raises eps_high)
  KL           k3 (exp(ref - logp) - (ref - logp) - 1, the reference) or k1 (logp - ref)
  aggregation  seq_mean_token_mean (reference), token_mean (DAPO), seq_mean_token_sum_norm (Dr.GRPO)
  loss variant standard (one loss over all completion tokens) or facial_r1_code (the authors' trainer:
               one clipped loss per reward function with its own token mask, averaged, times a
               per-record weight; `reward_function_loss_terms`)

Losses return (sum, denominator) rather than a mean, so that gradient accumulation over
micro-batches and multi-host reduction divide once by the global count.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ADVANTAGE_SCALES = ("group", "mean_only", "batch")
KL_ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
RATIO_LEVELS = ("token", "sequence")
LOSS_VARIANTS = ("standard", "facial_r1_code")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def group_advantages(
    rewards: jax.Array, num_generations: int, scale: str = "group", eps: float = 1e-4
) -> jax.Array:
    """One scalar advantage per completion; rows are grouped as [prompt0 x G, prompt1 x G, ...].

    group:     (r - mean_group) / (std_group + eps), std unbiased (ddof = 1) as in the reference.
    mean_only: r - mean_group (Dr.GRPO drops the std scaling, which over-weights easy prompts).
    batch:     (r - mean_group) / (std over the whole batch + eps).
    """
    _check("scale", scale, ADVANTAGE_SCALES)
    if rewards.ndim != 1 or rewards.shape[0] % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by num_generations={num_generations}, got {rewards.shape}"
        )
    grouped = rewards.reshape(-1, num_generations)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (grouped.std(axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std(ddof=1) + eps)
    return centred.reshape(-1)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    k3 = exp(ref - logp) - (ref - logp) - 1 is unbiased and always >= 0 (the reference's choice);
    k1 = logp - ref is the plain log-ratio.
    """
    _check("estimator", estimator, KL_ESTIMATORS)
    if estimator == "k1":
        return logp - ref_logp
    delta = ref_logp - logp
    return jnp.exp(delta) - delta - 1.0


def sequence_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """GSPO's per-token log-ratio: the sequence's mean log-ratio in value, each token's own gradient.

    value: (1/|o|) sum_t (logp - old) for every token of the completion; gradient w.r.t. logp_t:
    the token's own term (as in GSPO-token), via a stop-gradient on everything but logp_t.
    """
    mask = mask.astype(logp.dtype)
    length = jnp.maximum(mask.sum(axis=-1, keepdims=True), 1.0)
    seq_mean = ((logp - old_logp) * mask).sum(axis=-1, keepdims=True) / length
    return jax.lax.stop_gradient(seq_mean) + logp - jax.lax.stop_gradient(logp)


def clipped_objective(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    *,
    log_ratio: jax.Array | None = None,
) -> jax.Array:
    """Per-token PPO-clip loss: -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A).

    `advantages` is [batch] (one scalar per completion, shared by its tokens) or [batch, time]
    (e.g. the think-only AU variant). `log_ratio` overrides log(rho) (GSPO's sequence ratio).
    """
    if log_ratio is None:
        log_ratio = logp - old_logp
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return -jnp.minimum(unclipped, clipped)


def aggregate(per_token_loss: jax.Array, mask: jax.Array, mode: str, max_length: int | None = None):
    """Reduces a [batch, time] loss to (sum, denominator); the loss is sum / denominator.

    seq_mean_token_mean:     each completion's mean over its tokens, then the mean over completions.
    token_mean:              the mean over all completion tokens of the batch (DAPO).
    seq_mean_token_sum_norm: the sum over tokens divided by a constant max_length, then the mean over
                             completions (Dr.GRPO; max_length defaults to the padded time axis).
    Denominators count completions or tokens of THIS micro-batch; sum the pairs over micro-batches
    and hosts before dividing.
    """
    _check("mode", mode, AGGREGATIONS)
    mask = mask.astype(per_token_loss.dtype)
    masked = per_token_loss * mask
    num_sequences = jnp.asarray(per_token_loss.shape[0], per_token_loss.dtype)
    if mode == "token_mean":
        return masked.sum(), mask.sum()
    if mode == "seq_mean_token_mean":
        lengths = jnp.maximum(mask.sum(axis=-1), 1.0)
        return (masked.sum(axis=-1) / lengths).sum(), num_sequences
    length = per_token_loss.shape[-1] if max_length is None else max_length
    return masked.sum() / length, num_sequences


class GRPOLossTerms(NamedTuple):
    """(sum, denominator) of the loss, plus sums of diagnostics sharing the same denominator."""

    loss_sum: jax.Array
    denominator: jax.Array
    kl_sum: jax.Array
    clip_fraction_sum: jax.Array


def kl_term(logp, ref_logp, beta: float, kl_estimator: str):
    """Per-token KL to the reference policy, or zeros when beta = 0 (no reference is held then)."""
    if beta <= 0.0:
        return jnp.zeros_like(logp)
    if ref_logp is None:
        raise ValueError("beta > 0 needs reference log-probs (ref_logp)")
    return kl_penalty(logp, ref_logp, kl_estimator)


def grpo_loss_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean_token_mean",
    ratio_level: str = "token",
    max_length: int | None = None,
) -> GRPOLossTerms:
    """The full per-batch objective: clipped policy term + beta * KL, aggregated by `aggregation`."""
    _check("ratio_level", ratio_level, RATIO_LEVELS)
    log_ratio = sequence_log_ratio(logp, old_logp, mask) if ratio_level == "sequence" else None
    per_token = clipped_objective(logp, old_logp, advantages, eps_low, eps_high, log_ratio=log_ratio)
    kl = kl_term(logp, ref_logp, beta, kl_estimator)
    loss_sum, denominator = aggregate(per_token + beta * kl, mask, aggregation, max_length)
    kl_sum, _ = aggregate(kl, mask, aggregation, max_length)
    ratio = jnp.exp(logp - old_logp if log_ratio is None else log_ratio)
    clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).astype(logp.dtype)
    clip_sum, _ = aggregate(clipped, mask, aggregation, max_length)
    return GRPOLossTerms(loss_sum, denominator, kl_sum, clip_sum)


def reward_function_loss_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    think_mask: jax.Array,
    sample_weights: jax.Array,
    *,
    num_full_terms: int,
    num_think_terms: int,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    kl_estimator: str = "k3",
) -> GRPOLossTerms:
    """The authors' trainer's objective (docs/METHOD.md 7.6, `grpo.loss_variant = "facial_r1_code"`).

    The per-token loss l = -min(rho A, clip(rho) A) + beta KL (token ratio, A the one summed advantage
    of the completion) is reduced once per reward function k, each with its own token mask m_k: the
    AU reward's mask is `mask * think_mask` (the tokens inside <think>...</think>), every other
    function's is `mask`. Per completion i:

        L_k,i = sum_t l_it m_k,it / max(sum_t m_k,it, 1)        (0 when the mask is empty)
        L_i   = (1 / K) sum_k L_k,i                              (K = num_full_terms + num_think_terms)
        loss  = sum_i w_i L_i / N                                (w_i = the record's `weights` field)

    returned as (sum_i w_i L_i, N). The reference sums w_i L_i over each device's batch of one
    completion and averages over devices and accumulation steps, which is this mean over the N
    completions of the step. KL and clip fraction are reported per completion over all its tokens
    (unweighted), like the standard variant's `seq_mean_token_mean`.
    """
    if num_full_terms < 0 or num_think_terms < 0 or num_full_terms + num_think_terms < 1:
        raise ValueError(f"need at least one reward function, got {num_full_terms} over all tokens and "
                         f"{num_think_terms} over think tokens")
    per_token = clipped_objective(logp, old_logp, advantages, eps_low, eps_high)
    kl = kl_term(logp, ref_logp, beta, kl_estimator)
    loss = per_token + beta * kl
    mask = mask.astype(loss.dtype)
    think = mask * think_mask.astype(loss.dtype)

    def per_sequence_mean(values, token_mask):
        return (values * token_mask).sum(axis=-1) / jnp.maximum(token_mask.sum(axis=-1), 1.0)

    per_sample = num_full_terms * per_sequence_mean(loss, mask)
    if num_think_terms:
        per_sample = per_sample + num_think_terms * per_sequence_mean(loss, think)
    per_sample = per_sample / (num_full_terms + num_think_terms)
    num_sequences = jnp.asarray(loss.shape[0], loss.dtype)
    loss_sum = (sample_weights.astype(loss.dtype) * per_sample).sum()
    ratio = jnp.exp(logp - old_logp)
    clipped = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).astype(loss.dtype)
    return GRPOLossTerms(loss_sum, num_sequences, per_sequence_mean(kl, mask).sum(),
                         per_sequence_mean(clipped, mask).sum())
