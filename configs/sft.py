"""Stage 1: supervised fine-tuning on reasoning-annotated records (METHOD.md section 3).

Variants (`--config=configs/sft.py:VARIANT`):
  demo (default)   the built-in synthetic faces and the small demo model, trained from scratch on CPU.
  qwen2_5_vl_3b    the paper's recipe on Qwen2.5-VL-3B-Instruct (needs --config.model.checkpoint and real data).
  qwen2_5_vl_7b    the paper's recipe on Qwen2.5-VL-7B-Instruct (lr 5e-6, 2 epochs, batch 32, length 2048).
"""

import ml_collections

from configs import base


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
    # Supervised vision warm-up before step 0 (facialr1_jax/train/vision_warmup.py): the vision tower plus a
    # throw-away linear head learn the AUs and emotion of the labelled training faces, standing in for the
    # pretrained tower of a real VLM. Fresh models only: skipped when resuming or loading model.checkpoint.
    c.sft.vision_warmup_steps = 0  # Warm-up optimiser steps; 0 = off (pretrained towers need none).
    c.sft.vision_warmup_batch_size = 128  # Faces per warm-up step (all images must share one patch grid).
    c.sft.vision_warmup_lr = 2e-3  # Peak AdamW lr of the warm-up (10% linear warm-up, then cosine).

    _apply_variant(c, variant)
    return c


def _apply_variant(c: ml_collections.ConfigDict, variant: str) -> None:
    if variant == "demo":
        # Measured on the built-in data (README): 150 steps of 16 already give a 100% format-valid rate
        # on held-out faces; 160 keep a margin while the whole run stays well inside 10 CPU minutes.
        c.optimizer.lr = 2e-3
        c.optimizer.warmup_steps = 20
        c.sft.num_epochs = 0.0
        c.sft.num_steps = 160
        c.sft.eval_every_steps = 40
        c.sft.eval_num_examples = 32
        # From scratch, next-token loss alone leaves the vision tower blind (emotion accuracy at chance).
        # 200 steps of 128 faces take about 105 s here, and the throw-away head then reads 59.4% emotion
        # accuracy and AU micro-F1 0.640 on the test faces (WORKDIR/vision_warmup.json of this config;
        # the most frequent emotion is 16%); --config.sft.vision_warmup_steps=N measures other lengths.
        c.sft.vision_warmup_steps = 200
        # ... and the from-scratch language model's first gradients flatten those features again (with the
        # tower trained, its output after SFT varies along 3 directions and carries no emotion:
        # benchmarks/demo_perception.py), so the demo keeps the warmed-up tower frozen, as VLM fine-tuning
        # on little data often does.
        c.optimizer.vision_lr_scale = 0.0
    elif variant in ("qwen2_5_vl_3b", "qwen2_5_vl_7b"):
        c.model.preset = variant
        # bfloat16 compute over float32 parameters and AdamW moments (master weights, as the paper's
        # DeepSpeed bf16 runs keep): at this lr an update is far below bfloat16's spacing near typical
        # weights, so bfloat16 storage would round it away.
        c.model.dtype = "bfloat16"
        c.model.param_dtype = "float32"
        c.model.remat = True
        c.data.source = "jsonl"
        c.data.prompt_variant = "full"
        c.data.min_pixels = 56 * 56
        c.data.max_pixels = 448 * 448
        c.data.max_prompt_tokens = 1536
        c.data.max_target_tokens = 512
        c.mesh.fsdp = -1
        c.mesh.data = 1
        c.optimizer.lr = 5e-6
        c.optimizer.warmup_steps = 0
        c.sft.num_epochs = 2.0
        c.sft.batch_size = 32
        # 16 rows split evenly over data x fsdp = 8 or 16 devices (2 or 1 per device); a micro-batch
        # that does not divide over them is an error under FSDP (config_validation.check_batch_split).
        c.sft.micro_batch_size = 16
    else:
        raise ValueError(f"configs/sft.py: unknown variant {variant!r} (known: demo, qwen2_5_vl_3b, qwen2_5_vl_7b)")
