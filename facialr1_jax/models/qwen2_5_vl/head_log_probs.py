"""log p(target) through the LM head, with the backward pass written out.

Every training loss here (SFT's cross-entropy, GRPO's ratios and KL) needs, per position, only the
log-probability of one token: logits[target] - logsumexp(logits), logits = hidden @ head. Autodiff of
that expression builds the logits' gradient by scattering the picked entries' cotangent into a zero
(positions, vocab) array and adding the softmax term, and XLA's CPU backend then copies that gradient
into a transposed layout for the weight-gradient matmul: two extra passes over the largest array of
the step. Its closed form,

    d logits = g * (onehot(target) - softmax(logits)),

is one element-wise pass (the one-hot is a comparison with an iota) that feeds both matmuls directly.
`python benchmarks/head_gradient.py` times both at the GRPO update's LM-head shape in the `small`
benchmarks ((16, 64) positions through a 512 x 32,768 head, forward and backward).

The backward pass recomputes the logits from the hidden states, as `jax.checkpoint` would, so at most
one chunk's (positions, vocab) logits is ever held (`Qwen2_5_VL.token_log_probs` chunks the positions).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from facialr1_jax.parallel.rules import constrain

# The head's matmuls, keyed by vocab_axis: 1 for a (D, V) kernel, 0 for a tied (V, D) embedding.
_HEAD_EQUATIONS = {1: "...d,dv->...v", 0: "...d,vd->...v"}
_INPUT_GRADIENT = {1: "...v,dv->...d", 0: "...v,vd->...d"}
_WEIGHT_GRADIENT = {1: "nd,nv->dv", 0: "nd,nv->vd"}  # over all positions, flattened to n


def head_logits(hidden: jax.Array, weight: jax.Array, vocab_axis: int, dtype) -> jax.Array:
    """Vocabulary logits (..., V) in `dtype` from hidden states (..., D); the head as in `target_log_probs`.
    `Qwen2_5_VL.logits` is this function, so the loss and the sampler project the same way."""
    logits = jnp.einsum(_HEAD_EQUATIONS[vocab_axis], hidden.astype(dtype), weight.astype(dtype))
    return constrain(logits, ("batch", "length", "act_vocab")) if logits.ndim == 3 else logits


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def target_log_probs(hidden: jax.Array, weight: jax.Array, targets: jax.Array, vocab_axis: int, dtype) -> jax.Array:
    """log softmax(hidden @ head)[targets] in float32, shape targets.shape.

    hidden (..., D); targets (...) int; weight the head: a (D, V) kernel (vocab_axis=1) or a tied
    (V, D) embedding (vocab_axis=0); the matmul runs in `dtype` and the softmax in float32.
    """
    return _forward(hidden, weight, targets, vocab_axis, dtype)[0]


def _forward(hidden, weight, targets, vocab_axis, dtype):
    logits = head_logits(hidden, weight, vocab_axis, dtype).astype(jnp.float32)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - normaliser, (hidden, weight, targets, normaliser)


def _backward(vocab_axis, dtype, residuals, cotangent):
    hidden, weight, targets, normaliser = residuals
    # Recomputed: nothing vocabulary-sized is saved.
    logits = head_logits(hidden, weight, vocab_axis, dtype).astype(jnp.float32)
    vocab_ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    onehot = (vocab_ids == targets[..., None].astype(jnp.int32)).astype(jnp.float32)
    logits_grad = cotangent[..., None] * (onehot - jnp.exp(logits - normaliser[..., None]))
    logits_grad = logits_grad.astype(dtype)
    hidden_grad = jnp.einsum(_INPUT_GRADIENT[vocab_axis], logits_grad, weight.astype(dtype))
    weight_grad = jnp.einsum(_WEIGHT_GRADIENT[vocab_axis], hidden.reshape(-1, hidden.shape[-1]).astype(dtype),
                             logits_grad.reshape(-1, logits_grad.shape[-1]))
    return hidden_grad.astype(hidden.dtype), weight_grad.astype(weight.dtype), None


target_log_probs.defvjp(_forward, _backward)
