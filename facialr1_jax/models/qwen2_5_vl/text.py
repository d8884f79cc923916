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
"""

from __future__ import annotations

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
)
from facialr1_jax.parallel.rules import constrain

CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", None)  # (batch, kv_heads, max_len, head_dim)


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

    def __call__(self, x, cos, sin, mask, layer_cache=None, cache_index=None):
        batch, length = x.shape[:2]
        query = constrain(apply_rotary(self.q_proj(x), cos, sin), ("batch", "length", "act_heads", None))
        key = constrain(apply_rotary(self.k_proj(x), cos, sin), ("batch", "length", "act_kv_heads", None))
        value = constrain(self.v_proj(x), ("batch", "length", "act_kv_heads", None))
        # Head-major (see the module docstring): only these L tokens are transposed, never the cache.
        query = query.reshape(batch, length, self.num_key_value_heads, self.num_query_groups, -1)
        query = query.transpose(0, 2, 3, 1, 4)  # (B, KV, G, L, D)
        key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)  # (B, KV, L, D)
        new_cache = None
        if layer_cache is not None:
            cached_keys, cached_values = layer_cache
            start = (0, 0, cache_index, 0)
            key = jax.lax.dynamic_update_slice(cached_keys, key.astype(cached_keys.dtype), start)
            value = jax.lax.dynamic_update_slice(cached_values, value.astype(cached_values.dtype), start)
            key, value = constrain(key, CACHE_AXES), constrain(value, CACHE_AXES)
            new_cache = (key, value)
            key, value = key.astype(query.dtype), value.astype(query.dtype)
        out = grouped_attention(query, key, value, mask).transpose(0, 3, 1, 2, 4)  # (B, L, KV, G, D)
        return self.o_proj(out.reshape(batch, length, -1, out.shape[-1])), new_cache


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
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x), lambda h: constrain(h, ("batch", "length", "act_mlp")))
        return constrain(x, ("batch", "length", "act_embed")), new_cache


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
