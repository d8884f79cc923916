"""Evaluation: greedy generation over benchmark JSONL files, the paper's metrics (METHOD.md section 6).

Variants: demo (default: the built-in test split), paper (the eight benchmarks of the paper's tables;
set each benchmark's jsonl and image_root, e.g. --config.benchmarks.rafdb.jsonl=...).
"""

import ml_collections

from configs import base

# The benchmarks of the paper's tables; each entry names its dataset profile (label set, AU subset).
PAPER_BENCHMARKS = ("fer2013", "affectnet", "rafdb", "faba", "disfa", "bp4d", "rafau", "fea20k")


def _benchmark(profile: str, jsonl: str = "", image_root: str = "") -> ml_collections.ConfigDict:
    b = ml_collections.ConfigDict()
    b.profile = profile  # Dataset profile (facialr1_jax.fea.profiles): allowed labels and evaluated AUs.
    b.jsonl = jsonl  # FEA JSONL with ground truth ("" = skip this benchmark).
    b.image_root = image_root  # Folder the JSONL's image paths are relative to.
    b.max_examples = 0  # Evaluate only the first N records (0 = all).
    return b


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "eval"
    c.eval = ml_collections.ConfigDict()
    c.eval.checkpoint = ""  # A checkpoint or a training workdir (its latest checkpoint); "" = model.checkpoint.
    c.eval.batch_size = 32  # Prompts per generation batch.
    c.eval.max_new_tokens = 256  # Greedy generation length (the reference uses 1024).
    c.eval.rouge = True  # ROUGE-L F against the reference descriptions (where records have them).
    c.eval.write_predictions = True  # Write every prediction to WORKDIR/predictions-<benchmark>.jsonl.

    c.benchmarks = ml_collections.ConfigDict()
    if variant == "demo":
        c.benchmarks.synthface = _benchmark("synthface")  # The built-in test split (paths filled in at run time).
    elif variant == "paper":
        for name in PAPER_BENCHMARKS:
            c.benchmarks[name] = _benchmark(name)
        c.data.source = "jsonl"
        c.data.prompt_variant = "full"
        c.data.max_pixels = 448 * 448
        c.data.max_prompt_tokens = 1536
        c.eval.max_new_tokens = 1024
    else:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r} (known: demo, paper)")
    return c
