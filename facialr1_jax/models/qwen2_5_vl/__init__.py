"""Qwen2.5-VL in Flax NNX: the model every Facial-R1 stage trains and samples.

Numerically it is the Hugging Face PyTorch `Qwen2_5_VLForConditionalGeneration` (same checkpoint in,
same logits out within 1e-4 in float32; tests/models checks it). This docstring is the API contract
that the sampling engine, SFT and GRPO build on.

Building
--------
    config = facialr1_jax.models.get_preset("demo")                 # or Qwen2_5_VLConfig.from_hf_dict(...)
    model = Qwen2_5_VL(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, remat=False, rngs=nnx.Rngs(0))
    model = init_model(config, dtype=..., param_dtype=..., seed=0, mesh=None, rules=None)  # one compile,
                                                                    # parameters born in their sharding
    model = facialr1_jax.models.from_pretrained(hf_dir, dtype=..., compute_dtype=..., mesh=..., rules=...)
    facialr1_jax.models.save_pretrained(model, out_dir, max_shard_size="5GB")

Host-side planning (numpy; everything that depends on image sizes or where image tokens sit)
------------------------------------------------------------------------------------------
    plan = vision_plan(image_grid_thw, config.vision_config, pad_to=None)   -> VisionPlan (int32 arrays)
    position_ids, rope_deltas = multimodal_position_ids(input_ids, image_grid_thw, attention_mask, config)
        position_ids (3, B, L) int32, rope_deltas (B,) int32
    text_position_ids(positions (B, L)) -> (3, B, L)          # text-only batches
    decode_position_ids(real_tokens_before (B,), rope_deltas (B,)) -> (3, B, 1)   # jnp, inside jit
`pad_to` pads the patch count to a bucket: padded patches form their own attention segment, their merged
tokens come after all real ones and are never read, so `pixel_values` (N, patch_dim) can be zero-padded
to the bucket without recompiling. Padding `input_ids` needs only attention_mask = 0 there.

Jit-friendly forward pieces (arrays only; call inside jax.jit over nnx.split state)
-----------------------------------------------------------------------------------
    features = model.encode_images(pixel_values, plan)     # (N / 4, hidden), processor order, padding last
    embeds = model.embed(input_ids, features)              # placeholders (config.image_token_id) filled in
                                                           # row-major order across the batch
    out, cache = model.forward_embeds(embeds, position_ids, attention_mask=None, cache=None,
                                      cache_index=None, return_hidden=False)
    out, cache = model.forward(input_ids, position_ids, attention_mask, pixel_values, plan, cache,
                               cache_index, return_hidden)   # the three above in one call
    logits = model.logits(hidden)                          # (..., vocab); tied embedding when configured
    logp = model.token_log_probs(hidden, target_ids, chunk_size=128)   # (B, L) float32 log p(target),
                                                           # at most (B, chunk, vocab) logits alive
`out` is logits (B, L, vocab) or, with return_hidden=True, final-norm hidden states (B, L, hidden).

KV cache
--------
    cache = model.init_cache(batch, max_len, dtype=None)   # KVCache pytree: per-layer (B, kv_heads, max_len, head_dim): head-major, so decoding reads it untransposed
Without a cache, attention_mask is (B, L) over the inputs (1 = real token, 0 = padding; None = all real).
With a cache, the L inputs are written at slots [cache_index, cache_index + L) (cache_index a scalar
int32, the same for the whole batch) and attention_mask is (B, max_len) over cache slots, already marking
the new tokens' slots. Each query attends the real slots at or before its own. So:
  prefill:  forward_embeds(embeds (B, P), position_ids, slot_mask, cache, cache_index=0)
            with slot_mask = prompt mask padded with zeros to max_len (left-padded prompts are fine);
  decode:   forward(token (B, 1), decode_position_ids(n_real, rope_deltas), slot_mask with slot
            P + step set to 1, cache, cache_index=P + step).
Donate the cache to the jitted step; updates are dynamic_update_slice in place.

Shared-prompt (cascade) decoding, what the rollout engine runs: the prefill's cache (one row per prompt)
becomes the prompt part of a `text.SharedPromptCache` (`text.shared_prompt_cache(config, prefill_cache,
samples_per_prompt, completion_length)`), never repeated; each of the G samples of a prompt gets its own
completion part, and
    hidden, cache = model.language_model.decode_step(embeds (R, 1), position_ids, cache, prompt_mask,
                                                     completion_index)
attends the shared prompt with the G samples' queries in one matmul and each row's own completion,
under one softmax (`text.shared_prompt_attention`).

Convenience (host planning included; one compiled program per input shape; not for hot loops)
--------------------------------------------------------------------------------------------
    logits = model(input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None)
takes the processor's outputs (pixel_values = flattened patches (N, 3 * 2 * 14 * 14)) exactly like the
reference forward. Text positions skip left padding (as in the reference's generate()).

Sharding
--------
Every parameter carries logical axis names in `out_sharding` metadata and activations are constrained
with `facialr1_jax.parallel.constrain`; see facialr1_jax.parallel.rules for the names and the training /
sampling tables. `parallel.shard_model(model, mesh, rules)` places a built model; `from_pretrained(...,
mesh=mesh, rules=rules)` places each tensor as it is read. Trace inside `parallel.activation_sharding(mesh,
rules)` to apply the activation constraints.

Parameter paths (nnx): visual.{patch_embed, blocks[i].{norm1, attn.{qkv, proj}, norm2, mlp.{gate,up,down}_proj},
merger.{ln_q, mlp_in, mlp_out}}, language_model.{embed_tokens, layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, norm}, lm_head (absent when tie_word_embeddings).
"""

from facialr1_jax.models.qwen2_5_vl.config import ConfigError, Qwen2_5_VLConfig, TextConfig, VisionConfig
from facialr1_jax.models.qwen2_5_vl.model import Qwen2_5_VL, init_model
from facialr1_jax.models.qwen2_5_vl.positions import (
    decode_position_ids,
    multimodal_position_ids,
    text_position_ids,
)
from facialr1_jax.models.qwen2_5_vl.text import KVCache, init_cache
from facialr1_jax.models.qwen2_5_vl.vision import (
    VisionPlan,
    bound_frame_patches,
    bucket_size,
    merged_token_count,
    num_patches,
    vision_plan,
)

__all__ = [
    "ConfigError",
    "KVCache",
    "Qwen2_5_VL",
    "Qwen2_5_VLConfig",
    "TextConfig",
    "VisionConfig",
    "VisionPlan",
    "bound_frame_patches",
    "bucket_size",
    "decode_position_ids",
    "init_cache",
    "init_model",
    "merged_token_count",
    "multimodal_position_ids",
    "num_patches",
    "text_position_ids",
    "vision_plan",
]
