"""The Qwen2.5-VL vision tower and its host-side plan.

Everything that depends on the image sizes is computed on the host in numpy by `vision_plan`, so the
jitted tower sees only arrays of a fixed length and a bucketed number of patches never recompiles:

* the window permutation: patches are reordered so each attention window (window_size pixels square,
  i.e. 4 x 4 merged tokens for 112 px) is contiguous, exactly like the reference `window_index`;
* window segment ids: one id per window (the reference `cu_window_seqlens` boundaries) -- windowed
  blocks attend inside their segment (a block-diagonal mask), never within a distance band;
* image segment ids: one id per image frame (the reference `cu_seqlens`), used by the blocks listed in
  `fullatt_block_indexes`;
* 2-D rotary positions (row, column of each patch) in the permuted order;
* the inverse permutation that returns merged tokens to the processor's order.

Padding (`pad_to`) appends patches that form their own segment (id -1), attend only among themselves
and come out after all real merged tokens, so callers drop them by count.

Attention is always "same segment id" masking. Windowed blocks compute it block by block (a window
holds at most (window_size / patch_size)^2 patches, so each block of that many positions only needs
itself and its two neighbours): O(N * 64) rather than O(N^2) memory. Full-attention blocks attend
within whole frames. When the tower knows a bound on a frame's patch count (`frame_patches_bound`,
set from the data's max_pixels by `bound_frame_patches`), they use the same block scheme with blocks
of that size, O(N * bound), and check at run time that every frame fits (the sequence of G copies of
one image in a GRPO batch is then G small attentions, not one G^2-sized one); otherwise, or when a
frame does not fit, they take 1024 queries at a time against all keys.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from facialr1_jax.models.qwen2_5_vl.config import VisionConfig
from facialr1_jax.models.qwen2_5_vl.layers import (
    GatedMLP,
    Projection,
    RMSNorm,
    apply_rotary,
    inverse_frequencies,
    masked_attention,
)
from facialr1_jax.parallel.rules import constrain

PADDING_SEGMENT = -1


@struct.dataclass
class VisionPlan:
    """Host-computed index arrays for one call of the vision tower (a pytree of int32 arrays).

    N is the (padded) number of patches, M = N / merge_unit the number of merged tokens.
    """

    patch_order: jax.Array  # (N,) row of pixel_values at each position of the window-ordered sequence
    window_segment_ids: jax.Array  # (N,) attention window of each position (padding: -1)
    image_segment_ids: jax.Array  # (N,) image frame of each position (padding: -1)
    rotary_positions: jax.Array  # (N, 2) patch row and column of each position
    merged_restore: jax.Array  # (M,) position in window order of each merged token in processor order

    @property
    def num_patches(self) -> int:
        return int(self.patch_order.shape[0])


def _check_grid(grid_thw, config: VisionConfig) -> np.ndarray:
    grid = np.asarray(grid_thw, dtype=np.int64)
    if grid.ndim == 1:
        grid = grid[None, :]
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape (num_images, 3), got {grid.shape}")
    merge = config.spatial_merge_size
    for i, (t, h, w) in enumerate(grid):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise ValueError(f"image_grid_thw[{i}] = {[int(t), int(h), int(w)]}: t must be >= 1 and h, w positive "
                             f"multiples of spatial_merge_size={merge}")
    return grid


def num_patches(grid_thw, config: VisionConfig) -> int:
    """Patch rows the processor emits for these images (sum of t * h * w)."""
    grid = _check_grid(grid_thw, config)
    return int(np.sum(np.prod(grid, axis=1)))


def vision_plan(grid_thw, config: VisionConfig, pad_to: int | None = None) -> VisionPlan:
    """Plans one vision-tower call over all images of `grid_thw` (num_images, 3) packed together.

    `pad_to`: total patch count to pad to (a multiple of the merge unit, at least the real count);
    `pixel_values` must then have that many rows (the extra rows are ignored).
    """
    grid = _check_grid(grid_thw, config)
    merge, unit, window = config.spatial_merge_size, config.merge_unit, config.merged_window_size
    window_index, window_of_merged, frame_of_merged, positions = [], [], [], []
    merged_offset = next_window = next_frame = 0
    for t, h, w in grid.tolist():
        merged_h, merged_w = h // merge, w // merge
        merged = np.arange(t * merged_h * merged_w).reshape(t, merged_h, merged_w)
        for frame in range(t):
            for top in range(0, merged_h, window):
                for left in range(0, merged_w, window):
                    members = merged[frame, top:top + window, left:left + window].reshape(-1)
                    window_index.append(members + merged_offset)
                    window_of_merged.append(np.full(members.size, next_window))
                    frame_of_merged.append(np.full(members.size, next_frame + frame))
                    next_window += 1
        # Patch (row, column) in processor order: merge x merge blocks laid out block by block.
        rows = np.arange(h)[:, None].repeat(w, axis=1)
        cols = np.arange(w)[None, :].repeat(h, axis=0)
        block = lambda a: a.reshape(merged_h, merge, merged_w, merge).transpose(0, 2, 1, 3).reshape(-1)
        positions.append(np.tile(np.stack([block(rows), block(cols)], axis=-1), (t, 1)))
        merged_offset += t * merged_h * merged_w
        next_frame += t

    window_index = np.concatenate(window_index)
    patch_order = (window_index[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    window_segments = np.repeat(np.concatenate(window_of_merged), unit)
    image_segments = np.repeat(np.concatenate(frame_of_merged), unit)
    rotary_positions = np.concatenate(positions)[patch_order]
    merged_restore = np.argsort(window_index, kind="stable")

    real = patch_order.size
    target = real if pad_to is None else int(pad_to)
    if target < real or target % unit:
        raise ValueError(f"pad_to={pad_to} must be a multiple of {unit} and at least the {real} patches of "
                         f"image_grid_thw {grid.tolist()}")
    extra = target - real
    if extra:
        patch_order = np.concatenate([patch_order, np.arange(real, target)])
        window_segments = np.concatenate([window_segments, np.full(extra, PADDING_SEGMENT)])
        image_segments = np.concatenate([image_segments, np.full(extra, PADDING_SEGMENT)])
        rotary_positions = np.concatenate([rotary_positions, np.zeros((extra, 2), np.int64)])
        merged_restore = np.concatenate([merged_restore, np.arange(real // unit, target // unit)])
    as_int32 = lambda a: np.asarray(a, dtype=np.int32)
    return VisionPlan(patch_order=as_int32(patch_order), window_segment_ids=as_int32(window_segments),
                      image_segment_ids=as_int32(image_segments), rotary_positions=as_int32(rotary_positions),
                      merged_restore=as_int32(merged_restore))


# Segment ids that never occur in a plan: the tail padding of the blocked layouts below.
_BLOCK_PADDING = -2
_NO_NEIGHBOUR = -3
# Full-attention blocks process this many queries at a time against all keys.
FULL_ATTENTION_QUERY_CHUNK = 1024


def _attend(query, key, value, query_segments, key_segments):
    """Attention of (..., Lq, H, D) queries over (..., Lk, H, D) keys where segment ids are equal."""
    mask = query_segments[..., :, None] == key_segments[..., None, :]
    batch_shape = query.shape[:-3]
    flat = lambda a: a.reshape((-1,) + a.shape[len(batch_shape):])
    out = masked_attention(flat(query)[:, :, :, None, :], flat(key), flat(value), flat(mask))
    return out[:, :, :, 0, :].reshape(query.shape)


def _pad_rows(array, rows: int, fill):
    if rows == 0:
        return array
    return jnp.concatenate([array, jnp.full((rows,) + array.shape[1:], fill, array.dtype)])


def windowed_attention(query, key, value, segment_ids, block: int):
    """Block-diagonal attention over segments no longer than `block` positions (the windows).

    The window-ordered sequence is cut into blocks of `block` positions; a contiguous segment of at most
    `block` positions lies within one block or two neighbouring ones, so each query block attends only
    to its own block and its two neighbours, masked by segment id. Exactly the reference's per-window
    attention, at O(N * block) cost instead of O(N^2).
    """
    n, heads, dim = query.shape
    blocks = -(-n // block)
    extra = blocks * block - n
    segments = _pad_rows(segment_ids, extra, _BLOCK_PADDING).reshape(blocks, block)
    as_blocks = lambda a: _pad_rows(a, extra, 0).reshape(blocks, block, heads, dim)

    def with_neighbours(a, fill):
        edge = jnp.full_like(a[:1], fill)
        return jnp.concatenate([jnp.concatenate([edge, a[:-1]]), a, jnp.concatenate([a[1:], edge])], axis=1)

    out = _attend(as_blocks(query), with_neighbours(as_blocks(key), 0), with_neighbours(as_blocks(value), 0),
                  segments, with_neighbours(segments, _NO_NEIGHBOUR))
    return out.reshape(blocks * block, heads, dim)[:n]


def segments_fit(segment_ids: jax.Array, bound: int) -> jax.Array:
    """True (a traced bool) when every real segment (id >= 0) spans at most `bound` positions from its
    first to its last occurrence: then each lies within two neighbouring blocks of `bound` positions."""
    n = segment_ids.shape[0]
    positions = jnp.arange(n, dtype=jnp.int32)
    ids = jnp.where(segment_ids >= 0, segment_ids, n)  # padding goes to an extra, ignored bucket
    first = jax.ops.segment_min(positions, ids, num_segments=n + 1)[:n]
    last = jax.ops.segment_max(positions, ids, num_segments=n + 1)[:n]
    span = jnp.where(last >= first, last - first + 1, 0)
    return jnp.max(span) <= bound


def full_segment_attention(query, key, value, segment_ids, query_chunk: int = FULL_ATTENTION_QUERY_CHUNK,
                           segment_bound: int | None = None):
    """Attention within arbitrary-length segments (whole image frames).

    With `segment_bound` (a promise that no frame exceeds that many patches, checked at run time) and a
    sequence longer than three such blocks: `windowed_attention` with blocks of `segment_bound`, which
    reads 3 * segment_bound keys per query instead of N; a frame that breaks the promise sends the call
    to the general path, so the result never depends on it. The general path takes `query_chunk`
    queries at a time so the score matrix never exceeds (query_chunk, N) per head; chunks are
    rematerialised in the backward pass. Real positions get the same values on both paths; padding
    positions (segment -1, never read downstream) may differ."""
    n = query.shape[0]
    if segment_bound is not None and 3 * segment_bound < n:
        return jax.lax.cond(
            segments_fit(segment_ids, segment_bound),
            lambda: windowed_attention(query, key, value, segment_ids, segment_bound),
            lambda: _chunked_segment_attention(query, key, value, segment_ids, query_chunk))
    return _chunked_segment_attention(query, key, value, segment_ids, query_chunk)


def _chunked_segment_attention(query, key, value, segment_ids, query_chunk: int):
    n, heads, dim = query.shape
    if n <= query_chunk:
        return _attend(query, key, value, segment_ids, segment_ids)
    chunks = -(-n // query_chunk)
    extra = chunks * query_chunk - n
    queries = _pad_rows(query, extra, 0).reshape(chunks, query_chunk, heads, dim)
    query_segments = _pad_rows(segment_ids, extra, _BLOCK_PADDING).reshape(chunks, query_chunk)

    @jax.checkpoint
    def one_chunk(args):
        chunk_queries, chunk_segments = args
        return _attend(chunk_queries, key, value, chunk_segments, segment_ids)

    out = jax.lax.map(one_chunk, (queries, query_segments))
    return out.reshape(chunks * query_chunk, heads, dim)[:n]


class VisionAttention(nnx.Module):
    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, heads, hd = config.hidden_size, config.num_heads, config.head_dim
        std = config.initializer_range
        self.qkv = Projection((d,), (3, heads, hd), ("vision_embed",), ("qkv", "vision_heads", "head_dim"),
                              use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=std)
        self.proj = Projection((heads, hd), (d,), ("vision_heads", "head_dim"), ("vision_embed",), use_bias=True,
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=std)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 window_block: int | None, frame_bound: int | None = None) -> jax.Array:
        """`window_block`: the longest possible segment when the segments are windows, None for image frames;
        `frame_bound`: for frames, the promised largest frame (see `full_segment_attention`)."""
        qkv = self.qkv(x)  # (N, 3, heads, head_dim)
        query, key, value = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        query = constrain(apply_rotary(query, cos, sin), ("vision_tokens", "act_vision_heads", None))
        key = apply_rotary(key, cos, sin)
        if window_block is None:
            out = full_segment_attention(query, key, value, segment_ids, segment_bound=frame_bound)
        else:
            out = windowed_attention(query, key, value, segment_ids, window_block)
        return self.proj(out)


class VisionBlock(nnx.Module):
    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(config.hidden_size, 1e-6, dtype=dtype, param_dtype=param_dtype)
        self.norm2 = RMSNorm(config.hidden_size, 1e-6, dtype=dtype, param_dtype=param_dtype)
        self.attn = VisionAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, use_bias=True, embed_axis="vision_embed",
                            hidden_axis="vision_mlp", dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            stddev=config.initializer_range)

    def __call__(self, x, cos, sin, segment_ids, window_block, frame_bound=None):
        x = x + self.attn(self.norm1(x), cos, sin, segment_ids, window_block, frame_bound)
        x = x + self.mlp(self.norm2(x), lambda h: constrain(h, ("vision_tokens", "act_vision_mlp")))
        return constrain(x, ("vision_tokens", "act_vision_embed"))


class PatchMerger(nnx.Module):
    """RMSNorm, then each group of merge_unit consecutive patches -> one LM-width token (2-layer GELU MLP)."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.merged_width = config.hidden_size * config.merge_unit
        std = config.initializer_range
        self.ln_q = RMSNorm(config.hidden_size, 1e-6, dtype=dtype, param_dtype=param_dtype)
        self.mlp_in = Projection((self.merged_width,), (self.merged_width,), ("merger_in",), ("merger_hidden",),
                                 use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=std)
        self.mlp_out = Projection((self.merged_width,), (config.out_hidden_size,), ("merger_hidden",), ("embed",),
                                  use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=std)

    def __call__(self, x: jax.Array) -> jax.Array:
        grouped = self.ln_q(x).reshape(-1, self.merged_width)
        return self.mlp_out(jax.nn.gelu(self.mlp_in(grouped), approximate=False))


class VisionTower(nnx.Module):
    """pixel_values (N, patch_dim) + VisionPlan -> merged image features (N / merge_unit, out_hidden_size)."""

    def __init__(self, config: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # recompute each block's activations in the backward pass instead of storing them
        # The most patches one image frame may have (None: unknown); see `bound_frame_patches`.
        self.frame_patches_bound: int | None = None
        self.patch_embed = Projection((config.patch_dim,), (config.hidden_size,), ("patch",), ("vision_embed",),
                                      use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                      stddev=config.initializer_range)
        self.blocks = nnx.List([VisionBlock(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.depth)])
        self.merger = PatchMerger(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin (N, head_dim): row angles then column angles, each over head_dim / 4 frequencies, twice."""
        inv_freq = inverse_frequencies(self.config.head_dim // 2, self.config.rope_theta)
        angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # (N, 2, head_dim / 4)
        angles = angles.reshape(angles.shape[0], -1)
        angles = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(angles), jnp.sin(angles)

    def __call__(self, pixel_values: jax.Array, plan: VisionPlan) -> jax.Array:
        if pixel_values.shape != (plan.patch_order.shape[0], self.config.patch_dim):
            raise ValueError(f"pixel_values has shape {pixel_values.shape}; the vision plan expects "
                             f"({plan.patch_order.shape[0]}, {self.config.patch_dim})")
        x = self.patch_embed(jnp.take(pixel_values, plan.patch_order, axis=0))
        x = constrain(x, ("vision_tokens", "act_vision_embed"))
        cos, sin = self.rotary(plan.rotary_positions)
        for index, block in enumerate(self.blocks):
            if index in self.config.fullatt_block_indexes:
                segments, window_block = plan.image_segment_ids, None
            else:
                segments, window_block = plan.window_segment_ids, self.config.window_patches
            call = nnx.remat(VisionBlock.__call__, static_argnums=(5, 6)) if self.remat else VisionBlock.__call__
            x = call(block, x, cos, sin, segments, window_block, self.frame_patches_bound)
        merged = self.merger(x)
        return jnp.take(merged, plan.merged_restore, axis=0)


def frame_patches_for(max_pixels: int, config: VisionConfig) -> int:
    """The most patches a frame resized to at most `max_pixels` pixels can have (sides are multiples of
    patch_size * merge_size, so the count is a multiple of the merge unit)."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    patches = int(max_pixels) // (config.patch_size * config.patch_size)
    return max(config.merge_unit, patches // config.merge_unit * config.merge_unit)


def bound_frame_patches(model: nnx.Module, max_pixels: int) -> int:
    """Promises `model`'s vision tower (a Qwen2_5_VL or a VisionTower) frames of at most `max_pixels`
    pixels, which lets its full-attention blocks attend frame by frame (`full_segment_attention`); a
    larger frame still gets the exact result, by the general path. Returns the bound in patches."""
    tower = getattr(model, "visual", model)
    if not isinstance(tower, VisionTower):
        raise TypeError(f"expected a Qwen2_5_VL or a VisionTower, got {type(model).__name__}")
    tower.frame_patches_bound = frame_patches_for(max_pixels, tower.config)
    return tower.frame_patches_bound


def merged_token_count(grid_thw, config: VisionConfig) -> int:
    """Image placeholder tokens the processor inserts for these images."""
    return num_patches(grid_thw, config) // config.merge_unit


def bucket_size(count: int, multiple: int, minimum: int = 1) -> int:
    """The next power of two >= count (and >= minimum), rounded up to `multiple`; for padding buckets."""
    size = max(minimum, 1 << max(0, math.ceil(math.log2(max(count, 1)))))
    return -(-size // multiple) * multiple
