"""Token-level losses that return (sum, denominator) pairs.

A loss returned as a mean cannot be accumulated correctly: the mean of micro-batch means weights a
micro-batch with 3 target tokens like one with 300. So every loss here returns the SUM of per-token
terms and the COUNT they are averaged over; the train step (`facialr1_jax.train.step`) adds both
over micro-batches (and, through sharded reductions, over devices and hosts) and divides once by the
global count. Gradients of the sum are linear, so the result equals one big batch exactly in exact
arithmetic.

Conventions: `logits` [batch, length, vocab] at position t predict `targets[:, t]` (the batch
builder has already shifted the token ids: targets[t] = input_ids[t + 1]); `mask` [batch, length]
is 1 where a target counts. Log-softmax is computed in float32 whatever the logits dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t] | prefix) in float32, shape [batch, length].

    Written as `logit[target] - logsumexp(logits)` instead of materialising a full log-softmax, so
    the only [batch, length, vocab] float32 temporary is the one logsumexp needs.
    """
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def masked_cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Next-token cross-entropy summed over masked positions.

    Returns (loss_sum, token_count, extras) where extras holds further sums that average over the
    same count: `correct` (greedy prediction == target), for the token accuracy metric.
    """
    mask = mask.astype(jnp.float32)
    log_probs = token_log_probs(logits, targets)
    loss_sum = -jnp.sum(log_probs * mask)
    count = jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * mask)
    return loss_sum, count, {"correct": correct}


def safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 where nothing was counted (an all-masked batch must not produce NaN)."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1e-9), 0.0)
