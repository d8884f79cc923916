"""Stage 3: synthesise verified reasoning for labelled records with the model itself (METHOD.md 5).

Variants: demo (default: built-in stage 2 records, the demo GRPO model), qwen2_5_vl_7b.
"""

import ml_collections

from configs import base


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "synth"
    c.synth = ml_collections.ConfigDict()
    c.synth.checkpoint = ""  # Model: a checkpoint or a training workdir (latest checkpoint); "" = model.checkpoint.
    c.synth.input_jsonl = ""  # Labelled records to annotate ("" = the built-in stage 2 split).
    c.synth.max_records = 0  # Annotate only the first N records (0 = all).
    c.synth.batch_size = 32  # Prompts per generation batch.
    c.synth.max_new_tokens = 160  # Generation length per attempt.
    c.synth.max_attempts = 6  # 1 first try + up to 5 retries with cumulative feedback (the reference).
    c.synth.num_candidates = 1  # Candidates per attempt: 1 = greedy (reference); K > 1 = K samples, first passing kept.
    c.synth.temperature = 0.7  # Sampling temperature when num_candidates > 1.
    c.synth.check_aus = "exact"  # exact (AU set equals ground truth) | f1 (AU F1 >= au_f1_threshold) | off.
    c.synth.au_f1_threshold = 0.8  # Threshold for check_aus = f1.
    c.synth.check_label = True  # The answer must equal the ground-truth label (records with a label).
    c.synth.ban_hedges = False  # Reject answers with negations/hedges (no, not, without, maybe).
    c.synth.shard_size = 256  # Accepted/rejected records per output shard (written atomically).
    if variant == "qwen2_5_vl_7b":
        c.model.preset = variant
        c.model.dtype = "bfloat16"
        c.model.param_dtype = "bfloat16"
        c.data.source = "jsonl"
        c.data.prompt_variant = "full"
        c.data.max_pixels = 448 * 448
        c.data.max_prompt_tokens = 2048
        c.synth.max_new_tokens = 1024
    elif variant != "demo":
        raise ValueError(f"configs/synth.py: unknown variant {variant!r} (known: demo, qwen2_5_vl_7b)")
    return c
