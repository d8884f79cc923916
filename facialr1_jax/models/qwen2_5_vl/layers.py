"""Building blocks shared by the vision tower and the language model.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds logical axis names (see
facialr1_jax.parallel.rules); eager sharding is off so a model can be built without a mesh and placed
later with `shard_model`. Parameters are stored in `param_dtype` and cast to the compute `dtype` where
they are used; normalisation statistics, softmax and rotary angles are always float32, as in the
PyTorch reference.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Axes = tuple[str | None, ...]


def make_param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Axes, dtype, init: str = "normal",
               stddev: float = 0.02) -> nnx.Param:
    """A parameter with logical axes. `init` is "normal" (N(0, stddev), like the reference's
    `initializer_range`), "zeros" or "ones".

    Outside a trace the normal draw happens on the host (numpy, seeded from the nnx key): drawing with
    jax.random eagerly compiles one kernel per parameter shape, seconds of start-up for every fresh
    model. Inside a trace (nnx.eval_shape, jit) it stays jax.random.
    """
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"parameter of shape {shape} annotated with {len(axes)} logical axes {axes}")
    if init == "normal":
        key = rngs.params()
        if isinstance(key, jax.core.Tracer):
            value = stddev * jax.random.normal(key, shape, jnp.float32)
        else:
            seed = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
            value = (stddev * np.random.default_rng(seed).standard_normal(shape, np.float32))
            value = jnp.asarray(value)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


class Projection(nnx.Module):
    """A dense map from the trailing `in_shape` dims of x to `out_shape` dims (a general nn.Linear).

    The kernel has shape `in_shape + out_shape`, so attention projections keep their head structure
    (`(embed, heads, head_dim)`) and can be sharded per head without reshapes.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_axes: Axes, out_axes: Axes, *,
                 use_bias: bool, dtype, param_dtype, rngs: nnx.Rngs, stddev: float = 0.02):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.dtype = dtype
        self.kernel = make_param(rngs, self.in_shape + self.out_shape, tuple(in_axes) + tuple(out_axes), param_dtype,
                                 stddev=stddev)
        self.bias = (make_param(rngs, self.out_shape, tuple(out_axes), param_dtype, init="zeros")
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        leading = x.shape[: x.ndim - n_in]
        # The leading dims (batch, length, ...) go in as one row dim (a bitcast in row-major): with two
        # of them, XLA:CPU's backward pass copies activations and weight gradients into transposed
        # layouts around the matmuls (`benchmarks/sft_step_vs_torch.py`, two cores: 0.81-0.84 -> 0.91-0.99
        # of PyTorch in alternating runs).
        rows = x.reshape((-1,) + x.shape[x.ndim - n_in:]) if len(leading) != 1 else x
        y = jax.lax.dot_general(rows.astype(self.dtype), self.kernel[...].astype(self.dtype),
                                ((tuple(range(1, 1 + n_in)), tuple(range(n_in))), ((), ())))
        y = y.reshape(leading + self.out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y

    def out_in_kernel(self) -> tuple[jax.Array, jax.Array | None]:
        """(kernel as an (out, in) matrix, bias flattened to (out,) or None), a transposed copy for
        `out_in_dense` (the rollout engine's CPU decode step reads its weights this way)."""
        kernel = self.kernel[...].reshape(int(np.prod(self.in_shape)), int(np.prod(self.out_shape))).T
        return kernel, None if self.bias is None else self.bias[...].reshape(-1)


class RMSNorm(nnx.Module):
    """Root-mean-square normalisation computed in float32, scaled in the compute dtype."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype, axes: Axes = ("norm",)):
        self.eps = float(eps)
        self.dtype = dtype
        self.weight = make_param(None, (dim,), axes, param_dtype, init="ones")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


def out_in_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    """x (..., in) times an (out, in) kernel (PyTorch's nn.Linear layout), plus bias (out,): (..., out) in
    `dtype`. What `Projection` computes, from the `Projection.out_in_kernel` of its kernel."""
    rows = x.reshape(-1, x.shape[-1]).astype(dtype)
    y = jax.lax.dot_general(rows, kernel.astype(dtype), (((1,), (1,)), ((), ())))
    y = y.reshape(x.shape[:-1] + (kernel.shape[0],))
    return y if bias is None else y + bias.astype(dtype)


class GatedMLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool, embed_axis: str, hidden_axis: str, dtype,
                 param_dtype, rngs: nnx.Rngs, stddev: float = 0.02):
        kwargs = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=stddev)
        self.gate_proj = Projection((dim,), (hidden,), (embed_axis,), (hidden_axis,), **kwargs)
        self.up_proj = Projection((dim,), (hidden,), (embed_axis,), (hidden_axis,), **kwargs)
        self.down_proj = Projection((hidden,), (dim,), (hidden_axis,), (embed_axis,), **kwargs)

    def __call__(self, x: jax.Array, constrain_hidden=None) -> jax.Array:
        hidden = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        if constrain_hidden is not None:
            hidden = constrain_hidden(hidden)
        return self.down_proj(hidden)

    def out_in_kernels(self) -> tuple[jax.Array, jax.Array]:
        """(gate and up as one (2 * hidden, dim) matrix, down as (dim, hidden)): for `with_out_in_kernels`."""
        gate_up = jnp.concatenate([self.gate_proj.out_in_kernel()[0], self.up_proj.out_in_kernel()[0]], axis=0)
        return gate_up, self.down_proj.out_in_kernel()[0]

    def with_out_in_kernels(self, x: jax.Array, gate_up: jax.Array, down: jax.Array) -> jax.Array:
        """`__call__` through the (out, in) matrices of `out_in_kernels` (one matmul for gate and up)."""
        gate, up = jnp.split(out_in_dense(x, gate_up, None, self.down_proj.dtype), 2, axis=-1)
        return out_in_dense(jax.nn.silu(gate) * up, down, None, self.down_proj.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x (..., heads, head_dim) by angles whose cos/sin are (..., head_dim), in float32."""
    x32 = x.astype(jnp.float32)
    cos = cos[..., None, :].astype(jnp.float32)
    sin = sin[..., None, :].astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def inverse_frequencies(rotary_dim: int, theta: float) -> jax.Array:
    """The rotary inverse frequencies 1 / theta^(2i / rotary_dim), i < rotary_dim / 2 (float32)."""
    exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim
    return 1.0 / (theta**exponents)


def grouped_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped scaled-dot-product attention on head-major arrays.

    query: (B, KV, G, L, D) where G query heads share each of the KV key/value heads;
    key, value: (B, KV, S, D); mask: (B, L, S) boolean, True where a query may attend a key.
    Returns (B, KV, G, L, D). Scores and softmax run in float32; a query row with no allowed key gets a
    uniform (finite) distribution instead of NaN, and callers drop such rows (padding).

    The batch dims (B, KV) lead in every operand and the key/value dims are (S, D) in that order, so
    both contractions are plain batched matmuls: XLA never rearranges key or value. That matters for
    the KV cache (stored in this layout), which would otherwise be transposed whole on every decode step.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = jnp.einsum("bkgld,bksd->bkgls", query, key, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    return jnp.einsum("bkgls,bksd->bkgld", probs, value)


def masked_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """`grouped_attention` on sequence-major arrays (what a per-token projection produces).

    query: (B, L, KV, G, D); key, value: (B, S, KV, D); mask: (B, L, S). Returns (B, L, KV, G, D).
    The transposes to head-major order are the ones a batched matmul needs anyway.
    """
    heads_major = grouped_attention(query.transpose(0, 2, 3, 1, 4), key.transpose(0, 2, 1, 3),
                                    value.transpose(0, 2, 1, 3), mask)
    return heads_major.transpose(0, 3, 1, 2, 4)
