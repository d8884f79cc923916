"""Stage 0: perception pretraining of the demo base model (facialr1_jax/train/pretrain.py).

    python launch/train.py --config=configs/pretrain.py --workdir=W
    python launch/convert.py --to=hf --src=W --dst=DIR

A fresh `demo` preset Qwen2.5-VL learns to describe synthetic faces of new identities with their AU
codes (data/perception.py); no emotion word is ever shown. The shipped `demo-base` checkpoint is this
config's run, exported; its model card names the command, commit and measured metrics.
"""

import os

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "pretrain"
    c.pretrain = ml_collections.ConfigDict()
    # The corpus: faces of identities outside every demo split, rendered once and cached.
    c.pretrain.corpus_dir = os.path.join(base.DEFAULT_CACHE_DIR, "perception")
    c.pretrain.num_train_faces = 64000  # Distinct training faces (each a new person).
    c.pretrain.num_eval_faces = 500  # Held-out faces of other new people (the perception metrics).
    c.pretrain.corpus_seed = 0  # Seeds the corpus's AU sets, identities and poses.
    c.pretrain.num_steps = 1000  # Optimiser steps of next-token training on perception turns.
    c.pretrain.batch_size = 64  # Turns per step (one turn per face, drawn per epoch).
    # Supervised vision warm-up on the corpus faces before step 0 (AU targets; train/vision_warmup.py).
    c.pretrain.vision_warmup_steps = 800
    c.pretrain.vision_warmup_batch_size = 128
    c.pretrain.vision_warmup_lr = 2e-3
    c.pretrain.eval_every_steps = 400  # Greedy AU micro-F1 on eval_num_faces held-out faces every N steps.
    c.pretrain.eval_num_faces = 64
    c.pretrain.final_eval_num_faces = 0  # Faces of the final evaluation, with its baselines (0 = all).
    c.pretrain.eval_batch_size = 64
    c.pretrain.eval_max_new_tokens = 96

    c.data.max_prompt_tokens = 96  # System turn, instruction and the 16 image tokens of a 112 px face.
    c.data.max_target_tokens = 96  # The longest description (up to eight AUs) fits.
    c.optimizer.lr = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_fraction = 0.05
    c.optimizer.weight_decay = 0.01
    # The warmed-up tower learns on, gently: a from-scratch language model's first gradients would
    # otherwise flatten the features the warm-up taught it.
    c.optimizer.vision_lr_scale = 0.1
    c.checkpoint.every_steps = 250
    c.logging.every_steps = 25
    return c
