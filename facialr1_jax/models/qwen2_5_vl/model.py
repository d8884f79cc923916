"""The whole Qwen2.5-VL model (the reference `Qwen2_5_VLForConditionalGeneration`).

See the package docstring (facialr1_jax/models/qwen2_5_vl/__init__.py) for the API contract.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from facialr1_jax.models.qwen2_5_vl import head_log_probs
from facialr1_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from facialr1_jax.models.qwen2_5_vl.layers import Projection
from facialr1_jax.models.qwen2_5_vl.positions import multimodal_position_ids
from facialr1_jax.models.qwen2_5_vl.text import DecodeKernels, KVCache, LanguageModel, init_cache
from facialr1_jax.models.qwen2_5_vl.vision import VisionPlan, VisionTower, vision_plan
from facialr1_jax.parallel.rules import TRAINING_RULES, Rules, shard_model


class Qwen2_5_VL(nnx.Module):
    """Vision tower + language model + LM head.

    `dtype` is the compute dtype, `param_dtype` the storage dtype; `remat` rematerialises every vision
    block and decoder layer in the backward pass (less activation memory for about a third more FLOPs).
    """

    def __init__(self, config: Qwen2_5_VLConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: bool = False, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.visual = VisionTower(config.vision_config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.language_model = LanguageModel(config.text_config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                                            rngs=rngs)
        text = config.text_config
        self.lm_head = (None if config.tie_word_embeddings else
                        Projection((text.hidden_size,), (text.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                   dtype=dtype, param_dtype=param_dtype, rngs=rngs, stddev=text.initializer_range))

    # ---------------------------------------------------------------------------------------------
    # jit-friendly pieces (arrays in, arrays out)
    # ---------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: jax.Array, plan: VisionPlan) -> jax.Array:
        """Merged image features (num_patches / merge_unit, hidden) in processor order, padding last."""
        return self.visual(pixel_values, plan)

    def embed(self, input_ids: jax.Array, image_features: jax.Array | None = None,
              feature_offsets: jax.Array | None = None) -> jax.Array:
        """Token embeddings with the image placeholder tokens replaced by `image_features` rows.

        Without `feature_offsets`, placeholders are filled in row-major order over the whole batch (the
        processor's image order: one packed image per placeholder run). With `feature_offsets` (int [B]),
        row b's k-th placeholder reads feature row `feature_offsets[b] + k`, so rows may share one packed
        image (GRPO's samples of one prompt) or read images in any order. Either way the caller guarantees
        that every placeholder reads a real feature row (extra padded rows are never read); indices are
        clipped to the feature range so that a bad offset cannot read out of bounds.
        """
        embeds = self.language_model.embed_ids(input_ids)
        if image_features is None:
            return embeds
        is_image = input_ids == self.config.image_token_id
        if feature_offsets is None:
            feature_row = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        else:
            offsets = jnp.asarray(feature_offsets, jnp.int32)
            if offsets.shape != is_image.shape[:1]:
                raise ValueError(f"feature_offsets has shape {offsets.shape}; expected one offset per row "
                                 f"{is_image.shape[:1]} of input_ids {is_image.shape}")
            feature_row = offsets[:, None] + jnp.cumsum(is_image, axis=1, dtype=jnp.int32) - 1
        feature_row = jnp.clip(feature_row, 0, image_features.shape[0] - 1)
        features = jnp.take(image_features.astype(embeds.dtype), feature_row, axis=0)
        return jnp.where(is_image[..., None], features, embeds)

    def forward_embeds(self, inputs_embeds: jax.Array, position_ids: jax.Array, attention_mask: jax.Array | None = None,
                       cache: KVCache | None = None, cache_index: jax.Array | int | None = None,
                       return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder. Returns (logits (B, L, vocab) or final hidden states (B, L, hidden), new cache).

        Without `cache`: attention_mask is (B, L) over the inputs (None = all real).
        With `cache`: the inputs are written at slots [cache_index, cache_index + L) and attention_mask is
        (B, max_len) over cache slots, already marking the new tokens real.
        """
        hidden, new_cache = self.language_model(inputs_embeds, position_ids, attention_mask, cache, cache_index)
        if return_hidden:
            return hidden, new_cache
        return self.logits(hidden), new_cache

    def forward(self, input_ids: jax.Array, position_ids: jax.Array, attention_mask: jax.Array | None = None,
                pixel_values: jax.Array | None = None, plan: VisionPlan | None = None, cache: KVCache | None = None,
                cache_index: jax.Array | int | None = None, return_hidden: bool = False,
                feature_offsets: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """encode_images + embed + forward_embeds in one call; every argument is an array (jit this).

        feature_offsets (int [B], optional): the first merged image-feature row each row's placeholders
        read (see `embed`); None fills placeholders in row-major order over the batch.
        """
        if pixel_values is None and feature_offsets is not None:
            raise ValueError("feature_offsets given without pixel_values: there are no image features to read")
        embeds = self.embed(input_ids, self._image_features(pixel_values, plan), feature_offsets)
        return self.forward_embeds(embeds, position_ids, attention_mask, cache, cache_index, return_hidden)

    def shared_prompt_hidden(self, prompt_ids: jax.Array, prompt_positions: jax.Array, prompt_mask: jax.Array,
                             completion_ids: jax.Array, completion_positions: jax.Array, completion_mask: jax.Array,
                             pixel_values: jax.Array | None = None, plan: VisionPlan | None = None
                             ) -> tuple[jax.Array, jax.Array]:
        """Final hidden states of B prompts (B, P, hidden) and of the R = B * G completions that follow
        them (R, L, hidden), each prompt (and its image) computed once for its G completions
        (`text.LanguageModel.shared_prompt_forward`). prompt_positions (3, B, P), completion_positions
        (3, R, L); the images are the prompts', packed in prompt order (`embed` fills the prompts'
        placeholders row by row)."""
        prompt_embeds = self.embed(prompt_ids, self._image_features(pixel_values, plan))
        completion_embeds = self.language_model.embed_ids(completion_ids)
        return self.language_model.shared_prompt_forward(prompt_embeds, prompt_positions, prompt_mask,
                                                         completion_embeds, completion_positions, completion_mask)

    def _image_features(self, pixel_values: jax.Array | None, plan: VisionPlan | None) -> jax.Array | None:
        """encode_images, or None without images."""
        if pixel_values is None:
            return None
        if plan is None:
            raise ValueError("pixel_values given without a vision plan (see vision_plan)")
        return self.encode_images(pixel_values, plan)

    def _head(self) -> tuple[jax.Array, int]:
        """The LM head as (weight, vocab_axis): the (D, V) kernel, or the tied (V, D) embedding."""
        if self.lm_head is not None:
            return self.lm_head.kernel[...], 1
        return self.language_model.embed_tokens[...], 0

    def logits(self, hidden: jax.Array, kernels: DecodeKernels | None = None) -> jax.Array:
        """Vocabulary logits from final hidden states (the tied embedding when tie_word_embeddings);
        through `kernels.head` (the head as (vocab, hidden)) when the decode kernels are given."""
        if kernels is not None:
            return head_log_probs.head_logits(hidden, kernels.head, 0, self.dtype)
        return head_log_probs.head_logits(hidden, *self._head(), self.dtype)

    def decode_kernels(self) -> DecodeKernels:
        """The language model's weights re-laid out for the CPU decode step (`text.DecodeKernels`): a
        transposed copy of every layer's matrices and of an untied head (a tied embedding is already
        (vocab, hidden) and is used as it is)."""
        weight, vocab_axis = self._head()
        return DecodeKernels(layers=tuple(layer.decode_kernels() for layer in self.language_model.layers),
                             head=weight if vocab_axis == 0 else weight.T)

    def token_log_probs(self, hidden: jax.Array, target_ids: jax.Array, chunk_size: int = 128) -> jax.Array:
        """log p(target_ids) (B, L) float32 from hidden states (B, L, hidden), never holding more than
        (B, chunk_size, vocab) logits at once, also in the backward pass (each chunk's logits are
        recomputed there; `head_log_probs` has the hand-written gradient)."""
        batch, length = target_ids.shape
        chunk = max(1, min(chunk_size, length))
        padded = -(-length // chunk) * chunk
        hidden = jnp.pad(hidden, ((0, 0), (0, padded - length), (0, 0)))
        targets = jnp.pad(target_ids, ((0, 0), (0, padded - length)))

        weight, vocab_axis = self._head()

        def chunk_log_probs(args):
            h, t = args
            return head_log_probs.target_log_probs(h, weight, t, vocab_axis, self.dtype)

        h_chunks = hidden.reshape(batch, padded // chunk, chunk, -1).swapaxes(0, 1)
        t_chunks = targets.reshape(batch, padded // chunk, chunk).swapaxes(0, 1)
        out = jax.lax.map(chunk_log_probs, (h_chunks, t_chunks))
        return out.swapaxes(0, 1).reshape(batch, padded)[:, :length]

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return init_cache(self.config.text_config, batch, max_len, self.dtype if dtype is None else dtype)

    # ---------------------------------------------------------------------------------------------
    # convenience: the reference's input semantics, host-side planning included (not for hot loops)
    # ---------------------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Logits (B, L, vocab) for processor outputs, like the reference forward."""
        input_ids = np.asarray(input_ids)
        mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
        if (pixel_values is None) != (image_grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        position_ids, _ = multimodal_position_ids(input_ids, image_grid_thw, mask, self.config)
        if pixel_values is not None:
            vision = self.config.vision_config
            plan = vision_plan(image_grid_thw, vision)
            pixel_values = np.asarray(pixel_values)
            if pixel_values.shape != (plan.num_patches, vision.patch_dim):
                raise ValueError(f"pixel_values has shape {pixel_values.shape}, image_grid_thw describes "
                                 f"({plan.num_patches}, {vision.patch_dim})")
            placeholders = int(np.sum(input_ids == self.config.image_token_id))
            if placeholders != plan.num_patches // vision.merge_unit:
                raise ValueError(f"input_ids hold {placeholders} image tokens but the images give "
                                 f"{plan.num_patches // vision.merge_unit} features")
            plan = jax.tree.map(jnp.asarray, plan)
            pixel_values = jnp.asarray(pixel_values)
        else:
            plan = None
        return _jitted_logits(self, jnp.asarray(input_ids), jnp.asarray(position_ids),
                              None if mask is None else jnp.asarray(mask), pixel_values, plan)


@nnx.jit
def _jitted_logits(model: Qwen2_5_VL, input_ids, position_ids, attention_mask, pixel_values, plan):
    # One compiled program per input shape: op-by-op dispatch of the whole model is seconds slower.
    logits, _ = model.forward(input_ids, position_ids, attention_mask, pixel_values, plan)
    return logits


def init_model(config: Qwen2_5_VLConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False,
               seed: int = 0, mesh: Mesh | None = None, rules: Rules | None = None) -> Qwen2_5_VL:
    """A freshly initialised model (the values of `Qwen2_5_VL(..., rngs=nnx.Rngs(seed))`), placed on
    `mesh` with the shardings its logical axes map to under `rules` (default TRAINING_RULES).

    Parameters are drawn on the host one at a time and then placed, which is fast for the sizes one
    trains from scratch (tiny / small / demo); large models come from `from_pretrained`.
    """
    model = Qwen2_5_VL(config, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=nnx.Rngs(seed))
    if mesh is not None:
        shard_model(model, mesh, TRAINING_RULES if rules is None else rules)
    return model
