"""The Qwen2 language model with M-RoPE and a fixed-size KV cache.

Attention masks are built from two things only: a (B, S) boolean mask of which key slots hold real
tokens, and slot order for causality. Without a cache the slots are the L input tokens; with a cache
they are the S = max_len cache slots, the L new tokens are written at [cache_index, cache_index + L),
and query i (at slot cache_index + i) sees slots <= its own that the mask marks real. Left padding
therefore needs nothing special: padded slots are simply never attended.

Keys and values are head-major, (batch, kv_heads, slots, head_dim), in the cache and in attention:
batched matmuls want their batch dims (batch, kv_heads) leading, so in this layout a decode step reads
the cache as it lies. Stored (batch, slots, kv_heads, head_dim), every step would transpose every
layer's whole cache (about a fifth of a CPU decode step); now only the L new tokens' keys, values,
queries and outputs are transposed.

Sampling several completions of one prompt (GRPO's group) decodes through a second, cascade cache
(`SharedPromptCache`): the prompt's keys/values are stored once per prompt and only the completion's
keys/values per sample. Its keys are dimension-major, (rows, kv_heads, head_dim, slots), its values as
above: a decode step's scores are then a plain (queries x head_dim) @ (head_dim x slots) product,
where the (slots, head_dim) layout makes the batched matmul contract the minor dim of both operands,
which XLA:CPU runs about 4x slower at decode shapes (one layer's completion scores at `generate_vs_hf`'s
decode shape: 266-268 against 63-67 us, `python benchmarks/decode_layouts.py`). The
prompt keys are transposed once, when the cache is built from the prefill's. `LanguageModel.decode_step`
feeds one token per row through that
cache; its attention (`shared_prompt_attention`) scores the G samples' queries of a prompt together
against the prompt part (a (G * query groups) x head_dim by head_dim x P matmul per prompt and kv head,
instead of G matrix-vector products over G identical copies), scores each row against its own
completion part, and takes one softmax over both. GRPO's training passes use the same idea without a
cache (`LanguageModel.shared_prompt_forward`): a group's prompt goes through every layer once, and its
G completions attend its keys/values (`shared_prompt_block_attention`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from facialr1_jax.models.qwen2_5_vl.config import TextConfig
from facialr1_jax.models.qwen2_5_vl.layers import (
    GatedMLP,
    Projection,
    RMSNorm,
    apply_rotary,
    inverse_frequencies,
    make_param,
    grouped_attention,
    out_in_dense,
)
from facialr1_jax.parallel.rules import constrain

CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", None)  # (batch, kv_heads, max_len, head_dim)
# The keys of a `SharedPromptCache`: (rows, kv_heads, head_dim, slots).
DIM_MAJOR_KEY_AXES = ("cache_batch", "cache_kv_heads", None, "cache_length")


@struct.dataclass
class KVCache:
    """Per-layer key and value buffers, each (batch, num_key_value_heads, max_len, head_dim) (head-major,
    see the module docstring); logical axes CACHE_AXES."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]

    @property
    def max_len(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])


def init_cache(config: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
    zeros = lambda: constrain(jnp.zeros(shape, dtype), CACHE_AXES)
    return KVCache(keys=tuple(zeros() for _ in range(config.num_hidden_layers)),
                   values=tuple(zeros() for _ in range(config.num_hidden_layers)))


@struct.dataclass
class SharedPromptCache:
    """The decode cache for G samples per prompt: prompt keys/values once per prompt, completion
    keys/values per sample (see the module docstring). Rows are ordered [prompt0 x G, prompt1 x G, ...].

    prompt_keys        per layer (prompts, kv_heads, head_dim, P), logical axes DIM_MAJOR_KEY_AXES
    prompt_values      per layer (prompts, kv_heads, P, head_dim), logical axes CACHE_AXES
    completion_keys    per layer (prompts * G, kv_heads, head_dim, T), logical axes DIM_MAJOR_KEY_AXES
    completion_values  per layer (prompts * G, kv_heads, T, head_dim), logical axes CACHE_AXES
    """

    prompt_keys: tuple[jax.Array, ...]
    prompt_values: tuple[jax.Array, ...]
    completion_keys: tuple[jax.Array, ...]
    completion_values: tuple[jax.Array, ...]

    @property
    def num_prompts(self) -> int:
        return int(self.prompt_keys[0].shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.completion_keys[0].shape[0])

    @property
    def samples_per_prompt(self) -> int:
        return self.num_rows // self.num_prompts

    @property
    def prompt_length(self) -> int:
        return int(self.prompt_values[0].shape[2])

    @property
    def completion_length(self) -> int:
        return int(self.completion_values[0].shape[2])

    def with_completion_length(self, slots: int) -> "SharedPromptCache":
        """The cache grown to `slots` completion slots: the existing ones kept, the new ones empty (zero).
        The rollout engine decodes through growing windows of slots this way, so that early steps do
        not read (and attend) the empty slots of the whole completion."""
        current = self.completion_length
        if slots < current:
            raise ValueError(f"a completion part of {current} slots cannot shrink to {slots}")
        if slots == current:
            return self
        grow = lambda x, axis: jnp.pad(x, [(0, slots - current if a == axis else 0) for a in range(x.ndim)])
        return self.replace(
            completion_keys=tuple(constrain(grow(k, 3), DIM_MAJOR_KEY_AXES) for k in self.completion_keys),
            completion_values=tuple(constrain(grow(v, 2), CACHE_AXES) for v in self.completion_values))


def shared_prompt_cache(config: TextConfig, prompt_cache: KVCache, samples_per_prompt: int, completion_length: int,
                        dtype=None) -> SharedPromptCache:
    """A `SharedPromptCache` over the prompt keys/values of a prefill (`prompt_cache`, one row per prompt,
    nothing repeated; its keys transposed to dimension-major) with an empty completion part of
    `completion_length` slots for each of the `samples_per_prompt` samples of every prompt. dtype: the
    completion part's (default: the prompt cache's)."""
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
    if completion_length < 1:
        raise ValueError(f"completion_length must be at least 1, got {completion_length}")
    dtype = prompt_cache.keys[0].dtype if dtype is None else dtype
    completion = init_cache(config, prompt_cache.batch_size * samples_per_prompt, completion_length, dtype)
    dim_major = lambda keys: tuple(constrain(jnp.swapaxes(k, 2, 3), DIM_MAJOR_KEY_AXES) for k in keys)
    return SharedPromptCache(prompt_keys=dim_major(prompt_cache.keys),
                             prompt_values=tuple(constrain(v, CACHE_AXES) for v in prompt_cache.values),
                             completion_keys=dim_major(completion.keys), completion_values=completion.values)


@struct.dataclass
class LayerDecodeKernels:
    """One decoder layer's matrices as the CPU decode step reads them: each (out, in), PyTorch's
    nn.Linear layout, with q/k/v and gate/up concatenated along `out` (one matmul each).

    qkv (heads * head_dim + 2 * kv_heads * head_dim, hidden) and qkv_bias; out (hidden, heads *
    head_dim); gate_up (2 * intermediate, hidden); down (hidden, intermediate).
    """

    qkv: jax.Array
    qkv_bias: jax.Array
    out: jax.Array
    gate_up: jax.Array
    down: jax.Array


@struct.dataclass
class DecodeKernels:
    """The language model's weights re-laid out for the rollout engine's CPU decode step (see
    `sampling.engine`): per layer a `LayerDecodeKernels`, and the LM head as a (vocab, hidden) matrix.

    Why: at decode shapes (a few dozen rows times a weight matrix) XLA:CPU's matmul runs 1.15-1.17x
    faster for the MLP matrices and 1.13-1.16x for the vocabulary projection when the weight is
    (out, in) rather than the (in, out) the model stores (`python benchmarks/decode_layouts.py`);
    built once per generate call (one transposed copy of the language model's weights), read by
    every decode step.
    """

    layers: tuple[LayerDecodeKernels, ...]
    head: jax.Array


def shared_prompt_attention(query: jax.Array, prompt_keys: jax.Array, prompt_values: jax.Array, prompt_mask: jax.Array,
                            completion_keys: jax.Array, completion_values: jax.Array,
                            completion_mask: jax.Array, *, dim_major_keys: bool = False) -> jax.Array:
    """Attention of one new token per row over a prompt shared by G rows plus the row's own completion.

    query: (R, KV, Q, D) head-major, R = B * G rows ordered [prompt0 x G, ...], Q query heads per kv head;
    prompt_keys, prompt_values: (B, KV, P, D); prompt_mask: (B, P) bool, the prompt's real tokens;
    completion_keys, completion_values: (R, KV, T, D); completion_mask: (R, T) bool, slots written so far,
    or (R, Q, T) for a mask per query (`shared_prompt_block_attention` passes causal masks this way).
    dim_major_keys: both key arrays come as a `SharedPromptCache` stores them, (B, KV, D, P) and
    (R, KV, D, T).
    Returns (R, KV, Q, D): softmax over the concatenated [prompt, completion] keys, exactly what
    `grouped_attention` gives over a cache holding the prompt repeated G times followed by the completion.

    The prompt scores take the G rows' queries of a prompt as one (G * Q, D) matrix, so the prompt part
    is one matmul per (prompt, kv head) reading the prompt keys/values once, not G. The two parts share
    one softmax: a common max, one denominator (the sums of both parts). The queries are scaled by
    1/sqrt(D) before the scores (float32, then back to their dtype), and each part's unnormalised
    weights exp(score - max) weight its own values; the (R, KV, Q, D) sum is divided by the
    denominator last, instead of every score: fewer passes over the score arrays. Scores and softmax run in
    float32 as in `grouped_attention`. A row must have at least one completion slot marked (the token
    being decoded), so no row is ever all masked.
    """
    rows, kv_heads, per_kv, dim = query.shape
    prompts, prompt_length = prompt_mask.shape
    if rows % prompts:
        raise ValueError(f"{rows} query rows do not split into groups for {prompts} prompts")
    as_stored = (lambda shape: shape[:2] + (shape[3], shape[2])) if dim_major_keys else (lambda shape: shape)
    if (as_stored(prompt_keys.shape) != (prompts, kv_heads, prompt_length, dim)
            or prompt_values.shape != (prompts, kv_heads, prompt_length, dim)):
        raise ValueError(f"prompt keys/values must be {as_stored((prompts, kv_heads, prompt_length, dim))} / "
                         f"{(prompts, kv_heads, prompt_length, dim)}, got {prompt_keys.shape} / {prompt_values.shape}")
    slots = completion_values.shape[2]
    if completion_values.shape != (rows, kv_heads, slots, dim) or as_stored(completion_keys.shape) != completion_values.shape:
        raise ValueError(f"completion keys/values must be {as_stored((rows, kv_heads, 'T', dim))} / "
                         f"{(rows, kv_heads, 'T', dim)}, got {completion_keys.shape} / {completion_values.shape}")
    if completion_mask.shape not in ((rows, slots), (rows, per_kv, slots)):
        raise ValueError(f"completion_mask must be {(rows, slots)} or {(rows, per_kv, slots)}, "
                         f"got {completion_mask.shape}")
    samples = rows // prompts
    lowest = jnp.finfo(jnp.float32).min
    scale = 1.0 / math.sqrt(dim)

    # Row layout (R, KV, Q, ...) <-> shared layout (B, KV, G * Q, ...): small arrays only (queries,
    # per-query statistics, outputs), never keys or values.
    def to_shared(x):
        x = x.reshape(prompts, samples, kv_heads, per_kv, *x.shape[3:])
        return jnp.swapaxes(x, 1, 2).reshape(prompts, kv_heads, samples * per_kv, *x.shape[4:])

    def to_rows(x):
        x = x.reshape(prompts, kv_heads, samples, per_kv, *x.shape[3:])
        return jnp.swapaxes(x, 1, 2).reshape(rows, kv_heads, per_kv, *x.shape[4:])

    query = (query.astype(jnp.float32) * scale).astype(query.dtype)
    prompt_scores = jnp.einsum("bkqd,bkdp->bkqp" if dim_major_keys else "bkqd,bkpd->bkqp", to_shared(query),
                               prompt_keys, preferred_element_type=jnp.float32)
    prompt_scores = jnp.where(prompt_mask[:, None, None, :], prompt_scores, lowest)
    completion_scores = jnp.einsum("rkqd,rkdt->rkqt" if dim_major_keys else "rkqd,rktd->rkqt", query,
                                   completion_keys, preferred_element_type=jnp.float32)
    per_query_mask = completion_mask[:, None] if completion_mask.ndim == 3 else completion_mask[:, None, None, :]
    completion_scores = jnp.where(per_query_mask, completion_scores, lowest)

    top = jnp.maximum(to_rows(prompt_scores.max(axis=-1)), completion_scores.max(axis=-1))  # (R, KV, Q)
    prompt_weights = jnp.exp(prompt_scores - to_shared(top)[..., None])
    completion_weights = jnp.exp(completion_scores - top[..., None])
    total = to_rows(prompt_weights.sum(axis=-1)) + completion_weights.sum(axis=-1)  # (R, KV, Q)
    from_prompt = to_rows(jnp.einsum("bkqp,bkpd->bkqd", prompt_weights.astype(prompt_values.dtype), prompt_values,
                                     preferred_element_type=jnp.float32))
    from_completion = jnp.einsum("rkqt,rktd->rkqd", completion_weights.astype(completion_values.dtype),
                                 completion_values, preferred_element_type=jnp.float32)
    return ((from_prompt + from_completion) / total[..., None]).astype(prompt_values.dtype)


def mrope_stream_of_frequency(config: TextConfig) -> np.ndarray:
    """For each of the head_dim / 2 rotary frequencies, the position stream (0 t, 1 h, 2 w) driving it."""
    return np.repeat(np.arange(3), config.mrope_section)


def mrope_cos_sin(position_ids: jax.Array, config: TextConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin (B, L, head_dim) from M-RoPE position ids (3, B, L)."""
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta)
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq  # (3, B, L, head_dim / 2)
    stream = jnp.asarray(mrope_stream_of_frequency(config))
    angles = jnp.where(stream == 0, angles[0], jnp.where(stream == 1, angles[1], angles[2]))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def shared_prompt_block_attention(query: jax.Array, prompt_keys: jax.Array, prompt_values: jax.Array,
                                  prompt_mask: jax.Array, completion_keys: jax.Array, completion_values: jax.Array,
                                  completion_mask: jax.Array) -> jax.Array:
    """Causal attention of a whole completion per row over a prompt shared by G rows: the training
    forward's form of `shared_prompt_attention` (GRPO's update and reference passes).

    query: (R, KV, Q, L, D) head-major for the L completion tokens of each of R = B * G rows;
    prompt_keys, prompt_values: (B, KV, P, D); prompt_mask: (B, P) bool, the prompt's real tokens;
    completion_keys, completion_values: (R, KV, L, D), the same L tokens' keys/values; completion_mask:
    (R, L) bool, real completion tokens. Token i of a row attends its prompt's real tokens and the row's
    real tokens j <= i. Returns (R, KV, Q, L, D), what `grouped_attention` gives on the concatenation
    [prompt, completion] with the prompt repeated G times, without ever repeating it.
    """
    rows, kv_heads, per_kv, length, dim = query.shape
    if completion_mask.shape != (rows, length):
        raise ValueError(f"completion_mask must be {(rows, length)}, got {completion_mask.shape}")
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    visible = causal[None, :, :] & completion_mask.astype(bool)[:, None, :]  # (R, L, L)
    # The Q query heads x L tokens of a row become Q * L queries of `shared_prompt_attention`, each with
    # its own row of the causal mask.
    per_query = jnp.broadcast_to(visible[:, None], (rows, per_kv, length, length)).reshape(rows, per_kv * length, length)
    out = shared_prompt_attention(query.reshape(rows, kv_heads, per_kv * length, dim), prompt_keys, prompt_values,
                                  prompt_mask, completion_keys, completion_values, per_query)
    return out.reshape(rows, kv_heads, per_kv, length, dim)


class DecoderAttention(nnx.Module):
    def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, heads, kv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=config.initializer_range)
        self.num_key_value_heads = kv
        self.num_query_groups = config.num_query_groups
        self.q_proj = Projection((d,), (heads, hd), ("embed",), ("q_heads", "head_dim"), use_bias=True, **kwargs)
        self.k_proj = Projection((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kwargs)
        self.v_proj = Projection((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kwargs)
        self.o_proj = Projection((heads, hd), (d,), ("q_heads", "head_dim"), ("embed",), use_bias=False, **kwargs)

    def _project(self, x, cos, sin):
        """Rotated queries (B, L, heads, D), rotated keys and values (B, L, kv_heads, D)."""
        query = constrain(apply_rotary(self.q_proj(x), cos, sin), ("batch", "length", "act_heads", None))
        key = constrain(apply_rotary(self.k_proj(x), cos, sin), ("batch", "length", "act_kv_heads", None))
        value = constrain(self.v_proj(x), ("batch", "length", "act_kv_heads", None))
        return query, key, value

    def _project_with(self, kernels: LayerDecodeKernels, x, cos, sin):
        """`_project` through the fused (out, in) q/k/v matrix of a `LayerDecodeKernels`."""
        heads, kv = self.q_proj.out_shape[0], self.num_key_value_heads
        dim = self.q_proj.out_shape[1]
        fused = out_in_dense(x, kernels.qkv, kernels.qkv_bias, self.q_proj.dtype)
        query, key, value = jnp.split(fused, (heads * dim, (heads + kv) * dim), axis=-1)
        lead = x.shape[:-1]
        query = apply_rotary(query.reshape(lead + (heads, dim)), cos, sin)
        key = apply_rotary(key.reshape(lead + (kv, dim)), cos, sin)
        return query, key, value.reshape(lead + (kv, dim))

    def _project_head_major(self, x, cos, sin):
        """Queries (B, KV, G, L, D), keys and values (B, KV, L, D): head-major (see the module docstring),
        only these L tokens are transposed, never a cache."""
        batch, length = x.shape[:2]
        query, key, value = self._project(x, cos, sin)
        query = query.reshape(batch, length, self.num_key_value_heads, self.num_query_groups, -1)
        return query.transpose(0, 2, 3, 1, 4), key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)

    def _output(self, out):
        """o_proj of head-major attention output (B, KV, G, L, D)."""
        out = out.transpose(0, 3, 1, 2, 4)  # (B, L, KV, G, D)
        return self.o_proj(out.reshape(out.shape[0], out.shape[1], -1, out.shape[-1]))

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        query, key, value = self._project_head_major(x, cos, sin)
        new_cache = None
        if layer_cache is not None:
            cached_keys, cached_values = layer_cache
            start = (0, 0, cache_index, 0)
            key = jax.lax.dynamic_update_slice(cached_keys, key.astype(cached_keys.dtype), start)
            value = jax.lax.dynamic_update_slice(cached_values, value.astype(cached_values.dtype), start)
            key, value = constrain(key, CACHE_AXES), constrain(value, CACHE_AXES)
            new_cache = (key, value)
            key, value = key.astype(query.dtype), value.astype(query.dtype)
        return self._output(grouped_attention(query, key, value, mask)), new_cache

    def shared_prompt_forward(self, prompt_x, completion_x, prompt_rope, completion_rope, prompt_causal_mask,
                              prompt_mask, completion_mask):
        """Attention for B prompts (prompt_x (B, P, hidden)) and their G completions each (completion_x
        (R, L, hidden), R = B * G rows ordered [prompt0 x G, ...]) without repeating the prompts: the
        prompts attend causally among themselves (prompt_causal_mask (B, P, P)), the completions through
        `shared_prompt_block_attention`. *_rope: (cos, sin) pairs. Returns both outputs."""
        prompt_query, prompt_keys, prompt_values = self._project_head_major(prompt_x, *prompt_rope)
        query, keys, values = self._project_head_major(completion_x, *completion_rope)
        prompt_out = grouped_attention(prompt_query, prompt_keys, prompt_values, prompt_causal_mask)
        completion_out = shared_prompt_block_attention(query, prompt_keys, prompt_values, prompt_mask, keys, values,
                                                       completion_mask)
        return self._output(prompt_out), self._output(completion_out)

    def decode_step(self, x, cos, sin, layer_cache, prompt_mask, completion_mask, completion_index,
                    kernels: LayerDecodeKernels | None = None):
        """One new token per row (x: (R, 1, hidden)) through a `SharedPromptCache` layer: its keys/values
        are written at completion slot `completion_index`, then `shared_prompt_attention`.

        layer_cache: (prompt keys, prompt values, completion keys, completion values) of this layer.
        kernels: this layer's weights re-laid out (`DecodeKernels`), used instead of the projections.
        Returns (output (R, 1, hidden), (completion keys, completion values))."""
        rows = x.shape[0]
        prompt_keys, prompt_values, completion_keys, completion_values = layer_cache
        query, key, value = (self._project(x, cos, sin) if kernels is None
                             else self._project_with(kernels, x, cos, sin))
        # One token: (R, 1, heads, D) -> head-major (R, KV, Q, D), (R, 1, KV, D) -> (R, KV, 1, D) for the
        # value and (R, KV, D, 1) for the dimension-major key are plain reshapes.
        query = query.reshape(rows, self.num_key_value_heads, self.num_query_groups, -1)
        key = key.reshape(rows, self.num_key_value_heads, -1, 1)
        value = value.reshape(rows, self.num_key_value_heads, 1, -1)
        completion_keys = constrain(jax.lax.dynamic_update_slice(
            completion_keys, key.astype(completion_keys.dtype), (0, 0, 0, completion_index)), DIM_MAJOR_KEY_AXES)
        completion_values = constrain(jax.lax.dynamic_update_slice(
            completion_values, value.astype(completion_values.dtype), (0, 0, completion_index, 0)), CACHE_AXES)
        compute = lambda cached: cached.astype(query.dtype)
        out = shared_prompt_attention(query, compute(prompt_keys), compute(prompt_values), prompt_mask,
                                      compute(completion_keys), compute(completion_values), completion_mask,
                                      dim_major_keys=True)
        out = (self.o_proj(out.reshape(rows, 1, -1, out.shape[-1])) if kernels is None
               else out_in_dense(out.reshape(rows, 1, -1), kernels.out, None, self.o_proj.dtype))
        return out, (completion_keys, completion_values)


class DecoderLayer(nnx.Module):
    def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **norm)
        self.self_attn = DecoderAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, use_bias=False, embed_axis="embed",
                            hidden_axis="mlp", dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            stddev=config.initializer_range)

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        attended, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, cache_index)
        return self._feed_forward(x + attended), new_cache

    def decode_step(self, x, cos, sin, layer_cache, prompt_mask, completion_mask, completion_index,
                    kernels: LayerDecodeKernels | None = None):
        """`__call__` for one token per row over a `SharedPromptCache` layer (see `DecoderAttention.decode_step`)."""
        attended, new_cache = self.self_attn.decode_step(self.input_layernorm(x), cos, sin, layer_cache, prompt_mask,
                                                         completion_mask, completion_index, kernels)
        return self._feed_forward(x + attended, kernels), new_cache

    def decode_kernels(self) -> LayerDecodeKernels:
        """This layer's matrices re-laid out for the decode step (see `DecodeKernels`)."""
        attention, mlp = self.self_attn, self.mlp
        qkv = [p.out_in_kernel() for p in (attention.q_proj, attention.k_proj, attention.v_proj)]
        gate_up, down = mlp.out_in_kernels()
        return LayerDecodeKernels(qkv=jnp.concatenate([kernel for kernel, _ in qkv], axis=0),
                                  qkv_bias=jnp.concatenate([bias for _, bias in qkv], axis=0),
                                  out=attention.o_proj.out_in_kernel()[0], gate_up=gate_up, down=down)

    def shared_prompt_forward(self, prompt_x, completion_x, prompt_rope, completion_rope, prompt_causal_mask,
                              prompt_mask, completion_mask):
        """`__call__` for prompts and their completions (see `DecoderAttention.shared_prompt_forward`)."""
        prompt_attended, completion_attended = self.self_attn.shared_prompt_forward(
            self.input_layernorm(prompt_x), self.input_layernorm(completion_x), prompt_rope, completion_rope,
            prompt_causal_mask, prompt_mask, completion_mask)
        return self._feed_forward(prompt_x + prompt_attended), self._feed_forward(completion_x + completion_attended)

    def _feed_forward(self, x, kernels: LayerDecodeKernels | None = None):
        """The layer's second residual half: x + MLP(norm(x)); through the MLP's decode kernels when given."""
        normed = self.post_attention_layernorm(x)
        if kernels is None:
            x = x + self.mlp(normed, lambda h: constrain(h, ("batch", "length", "act_mlp")))
        else:
            x = x + self.mlp.with_out_in_kernels(normed, kernels.gate_up, kernels.down)
        return constrain(x, ("batch", "length", "act_embed"))


class LanguageModel(nnx.Module):
    """Token embedding, decoder layers and the final norm (the reference `Qwen2_5_VLTextModel`)."""

    def __init__(self, config: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # recompute each layer's activations in the backward pass instead of storing them
        self.embed_tokens = make_param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                                       param_dtype, stddev=config.initializer_range)
        self.layers = nnx.List([DecoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

    def embed_ids(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)

    def __call__(self, inputs_embeds, position_ids, attention_mask=None, cache: KVCache | None = None,
                 cache_index=None) -> tuple[jax.Array, KVCache | None]:
        batch, length = inputs_embeds.shape[:2]
        if position_ids.shape != (3, batch, length):
            raise ValueError(f"position_ids must have shape (3, {batch}, {length}), got {position_ids.shape}")
        if cache is None:
            keys = length
            query_slots = jnp.arange(length)
        else:
            if cache_index is None:
                raise ValueError("a cached forward needs cache_index (the first cache slot the new tokens fill)")
            if cache.batch_size != batch:
                raise ValueError(f"cache holds batch {cache.batch_size}, inputs have batch {batch}")
            keys = cache.max_len
            query_slots = cache_index + jnp.arange(length)
        if attention_mask is None:
            if cache is not None:
                raise ValueError("a cached forward needs attention_mask (batch, max_len) marking real cache slots")
            attention_mask = jnp.ones((batch, keys), dtype=bool)
        if attention_mask.shape != (batch, keys):
            raise ValueError(f"attention_mask must have shape ({batch}, {keys}) "
                             f"({'cache slots' if cache is not None else 'input tokens'}), got {attention_mask.shape}")
        causal = jnp.arange(keys)[None, :] <= query_slots[:, None]  # (L, S)
        mask = causal[None, :, :] & attention_mask.astype(bool)[:, None, :]

        cos, sin = mrope_cos_sin(position_ids, self.config)
        x = constrain(inputs_embeds.astype(self.dtype), ("batch", "length", "act_embed"))
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            call = nnx.remat(DecoderLayer.__call__) if self.remat else DecoderLayer.__call__
            x, updated = call(layer, x, cos, sin, mask, layer_cache, cache_index)
            if updated is not None:
                new_keys.append(updated[0])
                new_values.append(updated[1])
        new_cache = None if cache is None else KVCache(keys=tuple(new_keys), values=tuple(new_values))
        return self.norm(x), new_cache

    def decode_step(self, inputs_embeds, position_ids, cache: SharedPromptCache, prompt_mask,
                    completion_index, kernels: DecodeKernels | None = None) -> tuple[jax.Array, SharedPromptCache]:
        """One new token per row through a `SharedPromptCache` (the rollout engine's decode step).

        inputs_embeds (R, 1, hidden) and position_ids (3, R, 1) for the R = prompts * G rows; the new
        tokens are written at completion slot `completion_index` (a scalar, the same for every row) and
        attend the real tokens of their prompt (prompt_mask (prompts, P) bool) and completion slots
        [0, completion_index]. Returns (final hidden states (R, 1, hidden), the updated cache); the
        prompt part is read, never written. kernels: the layers' weights re-laid out (`decode_kernels`),
        used instead of their projections (the same maths; float32 sums in another order).
        """
        rows, length = inputs_embeds.shape[:2]
        if length != 1:
            raise ValueError(f"decode_step takes one token per row, got inputs of length {length}")
        if cache.num_rows != rows:
            raise ValueError(f"cache holds {cache.num_rows} completion rows, inputs have {rows}")
        if cache.num_rows % cache.num_prompts:
            raise ValueError(f"{cache.num_rows} completion rows do not split evenly over {cache.num_prompts} prompts")
        if prompt_mask.shape != (cache.num_prompts, cache.prompt_length):
            raise ValueError(f"prompt_mask must have shape {(cache.num_prompts, cache.prompt_length)}, "
                             f"got {prompt_mask.shape}")
        if position_ids.shape != (3, rows, 1):
            raise ValueError(f"position_ids must have shape (3, {rows}, 1), got {position_ids.shape}")
        completion_mask = jnp.broadcast_to(jnp.arange(cache.completion_length) <= completion_index,
                                           (rows, cache.completion_length))
        prompt_mask = prompt_mask.astype(bool)
        cos, sin = mrope_cos_sin(position_ids, self.config)
        x = constrain(inputs_embeds.astype(self.dtype), ("batch", "length", "act_embed"))
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            layer_cache = (cache.prompt_keys[index], cache.prompt_values[index], cache.completion_keys[index],
                           cache.completion_values[index])
            x, (keys, values) = layer.decode_step(x, cos, sin, layer_cache, prompt_mask, completion_mask,
                                                  completion_index, None if kernels is None else kernels.layers[index])
            new_keys.append(keys)
            new_values.append(values)
        return self.norm(x), cache.replace(completion_keys=tuple(new_keys), completion_values=tuple(new_values))

    def shared_prompt_forward(self, prompt_embeds, prompt_positions, prompt_mask, completion_embeds,
                              completion_positions, completion_mask) -> tuple[jax.Array, jax.Array]:
        """The uncached forward of R = B * G sequences that share B prompts, the prompts computed once.

        prompt_embeds (B, P, hidden), prompt_positions (3, B, P), prompt_mask (B, P) bool (left padding
        allowed); completion_embeds (R, L, hidden) and completion_positions (3, R, L) of the tokens that
        follow, rows ordered [prompt0 x G, prompt1 x G, ...]; completion_mask (R, L) bool, real tokens.
        Returns the final hidden states (prompts (B, P, hidden), completions (R, L, hidden)): the values
        `__call__` gives on the R concatenated sequences (prompt repeated, then completion), where every
        prompt position is the same for the G rows of a group (causal attention never looks ahead). In
        the backward pass the G rows' gradients reach the one prompt copy and add up there, as they
        would over G copies; the prompt's MLP, projections and attention cost once per group, not G times.
        """
        prompts, prompt_length = prompt_embeds.shape[:2]
        rows, length = completion_embeds.shape[:2]
        if rows % prompts:
            raise ValueError(f"{rows} completion rows do not split into equal groups for {prompts} prompts")
        for name, value, shape in (("prompt_positions", prompt_positions, (3, prompts, prompt_length)),
                                   ("prompt_mask", prompt_mask, (prompts, prompt_length)),
                                   ("completion_positions", completion_positions, (3, rows, length)),
                                   ("completion_mask", completion_mask, (rows, length))):
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        prompt_mask = prompt_mask.astype(bool)
        causal = jnp.tril(jnp.ones((prompt_length, prompt_length), dtype=bool))
        prompt_causal_mask = causal[None] & prompt_mask[:, None, :]
        prompt_rope = mrope_cos_sin(prompt_positions, self.config)
        completion_rope = mrope_cos_sin(completion_positions, self.config)
        prompt_x = constrain(prompt_embeds.astype(self.dtype), ("batch", "length", "act_embed"))
        completion_x = constrain(completion_embeds.astype(self.dtype), ("batch", "length", "act_embed"))
        call = nnx.remat(DecoderLayer.shared_prompt_forward) if self.remat else DecoderLayer.shared_prompt_forward
        for layer in self.layers:
            prompt_x, completion_x = call(layer, prompt_x, completion_x, prompt_rope, completion_rope,
                                          prompt_causal_mask, prompt_mask, completion_mask.astype(bool))
        return self.norm(prompt_x), self.norm(completion_x)
