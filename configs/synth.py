"""Stage 3: synthesise verified reasoning for labelled records with the model itself
(docs/METHOD.md section 8).

    python launch/train.py --config=configs/synth.py --workdir=workdirs/synth --config.synth.checkpoint=workdirs/grpo

Variants: demo (default: the built-in stage 2 records; name the demo GRPO run in synth.checkpoint),
qwen2_5_vl_7b (real data: synth.input_jsonl + data.image_root).

WORKDIR receives accepted-<block>.jsonl (records with the accepted answer as `description`),
rejected-<block>.jsonl (with every attempt and its problems), synth_manifest.json (progress: a killed
run resumes at the first unfinished block), synth_stats.json / .md and synth_yield.png (yield per
emotion, per source dataset, per attempt).
"""

import ml_collections

from configs import base
from configs import paper


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "synth"
    c.synth = synth_section()
    if variant == "qwen2_5_vl_7b":
        paper.apply_model(c, variant, training=False)  # inference: bfloat16 storage
        paper.apply_data(c)  # the reference's pixel cap: lower data.max_pixels to bound memory
        c.synth.max_new_tokens = 1024
        c.synth.max_prompt_tokens = 8192
        c.synth.batch_size = 16
    elif variant != "demo":
        raise ValueError(f"configs/synth.py: unknown variant {variant!r} (known: demo, qwen2_5_vl_7b)")
    return c


def synth_section() -> ml_collections.ConfigDict:
    """The `synth` section (shared with configs/pipeline.py)."""
    s = ml_collections.ConfigDict()
    # ---- model and inputs
    s.checkpoint = ""  # Model: a checkpoint step folder, a training workdir (its latest) or a HF folder; "" = model.checkpoint.
    s.input_jsonl = ""  # Labelled FEA JSONL to annotate (images under data.image_root); "" = the built-in stage 2 split.
    s.known_jsonl = ""  # Comma-separated FEA JSONL files already annotated: their ids are skipped, their descriptions taken.
    s.max_records = 0  # Annotate only the first N input records (0 = all).
    s.round = 1  # Round number written into each record's provenance (meta_info.synthesis.round) and the report.
    # ---- generation
    s.batch_size = 32  # Prompts per engine call (the last batch of an attempt is padded to this size).
    s.max_new_tokens = 160  # Generation length per candidate.
    s.max_prompt_tokens = 1024  # Budget of a synthesis prompt (ground truth + feedback make it longer than data.max_prompt_tokens).
    s.prompt_variant = ""  # "" = the variant the checkpoint was trained with (its run config) | full | compact.
    # synthesis (docs/METHOD.md 8.2: ground truth + cumulative feedback) | task (the plain training prompt: rejection
    # sampling, for small models that do not follow the synthesis prompt; use num_candidates > 1).
    s.prompt_mode = "synthesis"
    s.max_attempts = 6  # 1 first try + up to 5 retries with cumulative feedback (the reference).
    s.feedback_history = 0  # Feedback sections kept in a retry prompt: 0 = all (cumulative); N = the latest N.
    s.num_candidates = 1  # Candidates per attempt: 1 = greedy (reference); K > 1 = K samples, the first passing one kept.
    s.temperature = 0.7  # Sampling temperature when num_candidates > 1.
    # ---- checks (docs/METHOD.md 8.3: the reference check and our additions)
    s.check_aus = "exact"  # exact (AU set equals ground truth) | f1 (AU F1 >= au_f1_threshold) | off.
    s.au_f1_threshold = 0.8  # Threshold for check_aus = f1.
    s.check_label = True  # The answer must equal the ground-truth label (records with a label).
    s.require_format = True  # Exactly <think>..</think> then <answer>..</answer>, nothing else (a clean SFT target).
    s.ban_hedges = False  # Reject reasoning with negations/hedges (the prompt forbids them).
    s.hedge_words = ""  # Comma-separated words for ban_hedges; "" = no, not, without, maybe, never, none, perhaps (+ n't).
    s.dedup_descriptions = True  # An answer whose text was already kept for another record fails and is retried.
    # ---- output
    s.shard_size = 256  # Input records per block: each block writes accepted-/rejected-<block>.jsonl atomically.
    return s
