"""The paper's recipe on Qwen2.5-VL: the settings every paper variant shares (issue 23).

configs/sft.py, grpo.py and pipeline.py (`qwen2_5_vl_3b`, `qwen2_5_vl_7b`), synth.py (`qwen2_5_vl_7b`) and
eval.py (`paper`) call these instead of repeating them; each stage adds its own knobs.
"""

import ml_collections

PRESETS = ("qwen2_5_vl_3b", "qwen2_5_vl_7b")

# The reference's image processor keeps images up to 12,845,056 pixels (its min_pixels: 3,136), so BP4D
# (1040 x 1392) and DISFA (768 x 1024) frames stay near native size (their image-token counts follow from
# facialr1_jax.parallel.planning.image_grid_for). Lower data.max_pixels to bound the image tokens and the
# vision tower's memory, e.g. 448 * 448.
REFERENCE_MIN_PIXELS = 3136
REFERENCE_MAX_PIXELS = 12845056
# Room for a BP4D frame at the reference cap (1,850 image tokens) and the full instruction (~450 tokens).
# A prompt longer than this is an error naming its record (docs/METHOD.md 5); lowering data.max_pixels
# lets it shrink again (1,536 held every prompt at 448 * 448).
PROMPT_TOKENS = 2560


def apply_model(c: ml_collections.ConfigDict, preset: str, *, training: bool = True) -> None:
    """A pretrained Qwen2.5-VL preset computing in bfloat16. Training stages keep float32 parameters
    and AdamW moments (master weights, as the paper's DeepSpeed bf16 runs do: at lr 5e-6 / 1e-6 an
    update is far below bfloat16's spacing near typical weights, so bfloat16 storage would round it
    away) and rematerialise decoder layers; inference stages store bfloat16."""
    if preset not in PRESETS:
        raise ValueError(f"configs/paper.py: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32" if training else "bfloat16"
    if training:
        c.model.remat = True


def apply_data(c: ml_collections.ConfigDict, *, max_prompt_tokens: int = PROMPT_TOKENS) -> None:
    """FEA JSONL data (paths from the user), the full prompt, the reference's pixel caps."""
    c.data.source = "jsonl"
    c.data.prompt_variant = "full"
    c.data.min_pixels = REFERENCE_MIN_PIXELS
    c.data.max_pixels = REFERENCE_MAX_PIXELS  # the reference's cap; lower data.max_pixels to bound memory
    c.data.max_prompt_tokens = max_prompt_tokens


def apply_fsdp(c: ml_collections.ConfigDict) -> None:
    """Parameters and optimiser state sharded over every device (ZeRO-3, as the reference runs)."""
    c.mesh.fsdp = -1
    c.mesh.data = 1
