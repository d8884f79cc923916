"""Shared configuration: model, mesh, data, optimiser, checkpointing and logging.

Every stage config (sft.py, grpo.py, synth.py, pipeline.py, eval.py) starts from `get_base_config()`
and adds its own section. Every knob carries a comment; `facialr1_jax.config_validation.validate`
checks types and values before anything is compiled, so a typo fails in seconds, not after a compile.
"""

import os

import ml_collections

# Where the built-in demo data set is generated and cached (regenerated when its parameters change).
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "facialr1_jax"
)


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = ""  # Which stage launch/train.py runs: sft | grpo | synth | pipeline | eval.
    c.seed = 0  # Seeds parameter init, data order and sampling; a run is reproducible from it.

    # ---- model -------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.preset = "demo"  # tiny | small | demo | qwen2_5_vl_3b | qwen2_5_vl_7b (facialr1_jax.models.presets).
    c.model.checkpoint = ""  # "" = fresh init; a Hugging Face dir, an orbax checkpoint or a training workdir.
    c.model.tokenizer = ""  # "" = the bundled demo tokenizer (or the checkpoint's own, if it ships one).
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16.
    c.model.param_dtype = "float32"  # Storage dtype of the parameters: float32 | bfloat16.
    c.model.remat = False  # Rematerialise decoder layers in the backward pass (saves memory, costs ~1/3 more FLOPs).
    # JSON object of preset field overrides (facialr1_jax.models.get_preset), for a fresh model only, e.g.
    # '{"text_config": {"num_hidden_layers": 2}, "vision_config": {"depth": 1}}'; "" = the preset as is.
    c.model.preset_overrides = ""

    # ---- device mesh -------------------------------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Data-parallel axis size; -1 = all devices not used by the other axes.
    c.mesh.fsdp = 1  # Fully-sharded (ZeRO-3 style) axis: parameters and optimiser state split over it.
    c.mesh.tensor = 1  # Tensor-parallel axis: attention heads and MLP width split over it.

    # ---- data --------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # builtin (generated synthetic faces) | jsonl (FEA JSONL + image root) | tfds.
    c.data.builtin_dir = os.path.join(DEFAULT_CACHE_DIR, "demo")  # Cache of the generated built-in set.
    c.data.builtin_num_sft = 300  # Built-in stage 1 records (with reasoning), like the paper's ~300 seed set.
    c.data.builtin_num_rl = 4000  # Built-in stage 2 records (labels only).
    c.data.builtin_num_test = 500  # Built-in held-out test records (with reasoning).
    c.data.builtin_image_size = 112  # Side of the rendered faces, in pixels.
    c.data.train_jsonl = ""  # FEA JSONL for training (source=jsonl); the built-in split for source=builtin.
    c.data.eval_jsonl = ""  # FEA JSONL for held-out evaluation.
    c.data.image_root = ""  # Image paths in the JSONL are relative to this folder; nothing outside it is read.
    c.data.tfds_name = "fea20k/all"  # TFDS builder/config when source=tfds.
    c.data.tfds_data_dir = ""  # TFDS data_dir ("" = TFDS default).
    c.data.on_error = "raise"  # Bad rows: raise (stop at the first, naming file/line/field) | skip (count + report).
    c.data.prompt_variant = "compact"  # full (AU definitions + worked example) | compact (short contexts, small models).
    c.data.min_pixels = 56 * 56  # Images are resized so both sides are multiples of 28 within [min, max] pixels.
    c.data.max_pixels = 112 * 112  # 112 px faces -> 16 merged image tokens; real runs use e.g. 448*448.
    c.data.max_prompt_tokens = 256  # Prompts longer than this (after image-token expansion) are an error.
    c.data.max_target_tokens = 160  # SFT targets longer than this are truncated and counted in the metrics.
    c.data.num_workers = 0  # grain worker processes for decoding/patchifying (0 = in the main process).
    c.data.shuffle = True  # Seeded shuffling of the training records (epoch after epoch).

    # ---- optimiser ---------------------------------------------------------------------------
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-3  # Peak learning rate.
    c.optimizer.schedule = "linear"  # linear | cosine | constant decay after warm-up.
    c.optimizer.warmup_steps = 10  # Linear warm-up from 0 to lr.
    c.optimizer.end_lr_fraction = 0.0  # Final lr as a fraction of the peak (linear and cosine).
    c.optimizer.b1 = 0.9  # AdamW beta1.
    c.optimizer.b2 = 0.999  # AdamW beta2.
    c.optimizer.eps = 1e-8  # AdamW epsilon.
    c.optimizer.weight_decay = 0.0  # Decoupled weight decay (the reference uses none).
    c.optimizer.grad_clip = 1.0  # Global-norm gradient clipping (0 = off).
    c.optimizer.vision_lr_scale = 1.0  # Multiplies the vision tower's step (1 = like the rest, 0 = frozen).
    # Train parameters stored in bfloat16 (model.param_dtype) without float32 master weights. Off: such a
    # config is rejected, since AdamW updates far below bfloat16's spacing (small lr) round away.
    c.optimizer.allow_bfloat16_params = False

    # ---- checkpointing -----------------------------------------------------------------------
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50  # Save every N optimiser steps (and at the end, and on SIGTERM).
    c.checkpoint.max_to_keep = 2  # Older checkpoints are deleted.
    c.checkpoint.async_save = True  # Write in the background while training continues.

    # ---- logging -----------------------------------------------------------------------------
    c.logging = ml_collections.ConfigDict()
    c.logging.every_steps = 10  # Console/TensorBoard scalars every N steps.
    c.logging.tensorboard = True  # Write TensorBoard event files under WORKDIR/tensorboard.
    c.logging.progress_bar = True  # A console progress bar with loss, tokens/s and ETA.
    return c
