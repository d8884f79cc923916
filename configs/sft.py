"""Stage 1: supervised fine-tuning on reasoning-annotated records (docs/METHOD.md section 5).

Variants (`--config=configs/sft.py:VARIANT`):
  demo (default)   the built-in synthetic faces and the small demo model, trained from scratch on CPU.
  qwen2_5_vl_3b    the paper's recipe on Qwen2.5-VL-3B-Instruct (needs --config.model.checkpoint and real data).
  qwen2_5_vl_7b    the paper's recipe on Qwen2.5-VL-7B-Instruct (lr 5e-6, 2 epochs, batch 32, length 2048).
"""

import ml_collections

from configs import base
from configs import paper


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "sft"
    c.sft = ml_collections.ConfigDict()
    c.sft.num_epochs = 2.0  # Passes over the training records (fractions allowed); ignored if num_steps > 0.
    c.sft.num_steps = 0  # Optimiser steps; 0 = derived from num_epochs.
    c.sft.batch_size = 16  # Sequences per optimiser step (the global, effective batch).
    c.sft.micro_batch_size = 0  # Sequences per forward/backward; 0 = batch_size (no accumulation).
    # The reply SFT trains on: description (the record's reasoning text, the paper's target) | compact
    # (`<think>AU6, AU12</think>\n<answer>happiness</answer>` built from the labels: data/examples.py).
    c.data.target = "description"
    c.sft.loss_on = "assistant"  # assistant (reply tokens only, the default) | all (every non-pad, non-image token, as the reference).
    # Share of training examples (drawn per example and epoch) whose prompt is the stage 3 synthesis prompt
    # with the record's own ground truth (labels/AUs), the reply unchanged: teaches a from-scratch model to
    # follow that prompt, as a pretrained instruct VLM does without it. Synthesis prompts are longer:
    # data.max_prompt_tokens must hold them.
    c.sft.synthesis_prompt_share = 0.0
    c.sft.eval_every_steps = 0  # Held-out loss (and greedy format/accuracy) every N steps; 0 = only at the end.
    c.sft.eval_num_examples = 64  # Held-out examples for the loss and the periodic greedy evaluation (0 = all).
    c.sft.final_eval_num_examples = 0  # Held-out examples for the final greedy evaluation (0 = the whole test split).
    c.sft.eval_batch_size = 32  # Sequences per held-out loss batch and prompts per generation batch.
    c.sft.eval_max_new_tokens = 160  # Greedy generation length in the evaluations.

    _apply_variant(c, variant)
    return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
    if variant == "demo":
        # The demo starts, as the paper does, from a base VLM that perceives: the shipped `demo-base`
        # (stage 0, configs/pretrain.py), which describes faces with AU codes but knows no emotion.
        c.model.checkpoint = "demo-base"
        c.optimizer.lr = 5e-4
        c.optimizer.warmup_steps = 10
        c.sft.num_epochs = 0.0
        c.sft.num_steps = 200
        c.sft.eval_every_steps = 50
        c.sft.eval_num_examples = 32
        # The base's tower was trained to see the AUs; 300 descriptions are too few to move it further.
        c.optimizer.vision_lr_scale = 0.0
    elif variant in paper.PRESETS:
        paper.apply_model(c, variant)  # bfloat16 compute over float32 master weights
        paper.apply_data(c)  # the reference's pixel cap: lower data.max_pixels to bound memory
        c.data.max_target_tokens = 512
        paper.apply_fsdp(c)
        c.optimizer.lr = 5e-6
        c.optimizer.warmup_steps = 0
        c.sft.num_epochs = 2.0
        c.sft.batch_size = 32
        # 16 rows split evenly over data x fsdp = 8 or 16 devices (2 or 1 per device); a micro-batch
        # that does not divide over them is an error under FSDP (config_validation.check_batch_split).
        c.sft.micro_batch_size = 16
    else:
        raise ValueError(f"configs/sft.py: unknown variant {variant!r} (known: demo, qwen2_5_vl_3b, qwen2_5_vl_7b)")
