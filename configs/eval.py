r"""Evaluation: greedy generation over benchmark JSONL files, scored with the paper's metrics
(docs/METHOD.md section 9).

    python launch/eval.py --checkpoint=workdirs/grpo                      # demo: the built-in test split
    python launch/eval.py --config=configs/eval.py:paper --checkpoint=HF_OR_WORKDIR \
        --config.benchmarks.rafdb.jsonl=rafdb_test.jsonl --config.benchmarks.rafdb.image_root=RAF-DB/

Variants:
  demo (default)  the built-in synthetic test split (generated on first use, like the training stages).
  paper           the eight benchmarks of the paper's tables; fill in each benchmark's jsonl and image_root.
                  Benchmarks left without a jsonl are skipped (at least one must be set).
"""

import ml_collections

from configs import base
from configs import paper

# The benchmarks of the paper's tables and the dataset profile (label set, AU subset) of each.
PAPER_BENCHMARKS = {
    "fer2013": "FER2013",
    "affectnet": "AffectNet",
    "rafdb": "RAF-DB",
    "faba": "FABA",
    "disfa": "DISFA",
    "bp4d": "BP4D",
    "rafau": "RAF-AU",
    "fea20k": "FEA-20K",
}


def _benchmark(profile: str, jsonl: str = "", image_root: str = "") -> ml_collections.ConfigDict:
    b = ml_collections.ConfigDict()
    b.profile = profile  # Dataset profile (facialr1_jax.fea.profiles): allowed labels and evaluated AUs.
    b.jsonl = jsonl  # FEA JSONL with ground truth ("" = skip this benchmark; the demo split is filled in).
    b.image_root = image_root  # Folder the JSONL's image paths are relative to.
    b.max_examples = 0  # Evaluate only the first N records (0 = all).
    return b


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = base.get_base_config()
    c.stage = "eval"
    c.eval = ml_collections.ConfigDict()
    # A training workdir (its latest checkpoint), a checkpoint step folder or a Hugging Face folder;
    # "" = model.checkpoint. launch/eval.py --checkpoint=... sets it.
    c.eval.checkpoint = ""
    # Encode prompts as the checkpoint's training run did (the data section it recorded: prompt
    # variant, image pixels, prompt length); False, or a Hugging Face folder = this config's data section.
    c.eval.use_checkpoint_encoding = True
    c.eval.batch_size = 32  # Prompts per generation batch (the last batch is padded to the same shape).
    c.eval.max_new_tokens = 256  # Greedy generation length (the reference uses 1024).
    # Compare answers through the label normaliser ("Happy." counts as happiness); False = exact match.
    # Either way metrics.json reports both readings (emotion_accuracy_exact, emotion_accuracy_normalized);
    # this picks the one `emotion_accuracy` (and REGE) uses.
    c.eval.normalize_emotions = True
    c.eval.rouge = True  # ROUGE-L F against the reference descriptions (where records have them).
    c.eval.plots = True  # Write a confusion-matrix PNG per benchmark with emotion labels.
    c.eval.write_predictions = True  # Write every output and its scores to WORKDIR/predictions-<benchmark>.jsonl.

    c.benchmarks = ml_collections.ConfigDict()
    if variant == "demo":
        c.benchmarks.synthface = _benchmark("synthface")  # The built-in test split (paths filled in at run time).
    elif variant == "paper":
        for name, profile in PAPER_BENCHMARKS.items():
            c.benchmarks[name] = _benchmark(profile)
        paper.apply_data(c)  # the reference's pixel cap: lower data.max_pixels to bound memory
        c.eval.max_new_tokens = 1024
        c.eval.batch_size = 16
        # The authors' evaluation compares answers exactly; the normalised accuracy is reported beside it.
        c.eval.normalize_emotions = False
    else:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r} (known: demo, paper)")
    return c
