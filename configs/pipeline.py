"""The iterative loop: R rounds of SFT -> GRPO -> evaluation -> synthesis (docs/METHOD.md section 8.5).

    python launch/train.py --config=configs/pipeline.py --workdir=workdirs/pipeline

Round 1 trains SFT on the seed set (the nested `warm_start` config) and GRPO on the stage 2 records,
unless `pipeline.initial_checkpoint` names an existing GRPO model to start from. Round r > 1 trains
SFT on the seed set plus every record accepted by the earlier rounds' synthesis, starting from round
r-1's GRPO model, then GRPO from that. Every round evaluates its GRPO model on the held-out test
split and then synthesises reasoning for the stage 2 records not accepted yet. One table holds all
rounds: WORKDIR/rounds.json, rounds.md and rounds.png. A finished round is skipped on restart; an
interrupted stage resumes from its own checkpoints or shards.

The model and data sections of this config apply to every stage (the SFT runs included); the
`warm_start` section supplies the SFT knobs (sft, optimizer) of round 1.

Variants:
  demo (default)   the built-in data and demo model; later rounds fine-tune (200 SFT, 50 GRPO steps).
  qwen2_5_vl_3b / qwen2_5_vl_7b (alias: paper = 7B)   the paper's loop: every round retrains SFT for
                   whole epochs (warm_start's 2) on the seed set plus every accepted record, from the
                   previous round's model, then runs GRPO as stage 2 does (one pass over the stage 2
                   records, grpo.num_epochs = 1, as the reference's one-epoch run), and evaluates on the
                   test split (data.eval_jsonl) and on every paper benchmark filled in under
                   config.benchmarks (configs/eval.py:paper: exact answers, 1,024 new tokens).
                   Needs warm_start.data.train_jsonl (the seed set), data.train_jsonl (stage 2 records),
                   data.eval_jsonl and data.image_root.
"""

import ml_collections

from configs import eval as eval_config
from configs import grpo as grpo_config
from configs import paper
from configs import synth as synth_config


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    if variant == "paper":
        variant = "qwen2_5_vl_7b"
    if variant != "demo" and variant not in paper.PRESETS:
        raise ValueError(f"configs/pipeline.py: unknown variant {variant!r} (known: demo, paper, "
                         f"{', '.join(paper.PRESETS)})")
    c = grpo_config.get_config(variant)
    c.stage = "pipeline"
    c.synth = synth_config.get_config("demo" if variant == "demo" else "qwen2_5_vl_7b").synth
    c.eval = eval_config.get_config("demo").eval
    c.pipeline = ml_collections.ConfigDict()
    c.pipeline.rounds = 2  # Rounds of SFT -> GRPO -> evaluation -> synthesis.
    # Round 1's model: "" = train SFT (warm_start) then GRPO in WORKDIR/round-1; else a GRPO run's workdir or
    # checkpoint to use as round 1's model as is (its training is then not repeated).
    c.pipeline.initial_checkpoint = ""
    c.pipeline.sft_steps_per_round = 200  # SFT steps in rounds after the first (on seed + accepted records).
    # > 0: rounds after the first retrain SFT for this many whole epochs over seed + accepted records
    # instead of sft_steps_per_round steps (the paper retrains on the enlarged set).
    c.pipeline.sft_epochs_per_round = 0.0
    c.pipeline.sft_lr = 5e-4  # Peak SFT learning rate in rounds after the first (fine-tuning a trained model); 0 = warm_start's.
    # Share of synthesis-prompt SFT examples in rounds after the first (sft.synthesis_prompt_share); < 0 = warm_start's.
    c.pipeline.sft_synthesis_prompt_share = -1.0
    # GRPO steps in rounds after the first (round 1 runs the grpo section as configured); -1 = every round
    # runs the grpo section as configured (grpo.num_steps, or grpo.num_epochs passes over the records).
    c.pipeline.grpo_steps_per_round = 50
    c.pipeline.final_synthesis = True  # The last round synthesises too (False: stop after its evaluation).
    c.pipeline.eval_num_examples = 0  # Test records in each round's evaluation (0 = the whole split).
    if variant == "demo":
        _follow_the_synthesis_prompt(c)
    else:
        _paper_rounds(c)
    return c


def _paper_rounds(c: ml_collections.ConfigDict) -> None:
    """Each round as the paper runs its stages, not a short fine-tune: SFT retrained for whole epochs on
    the enlarged set at warm_start's learning rate, GRPO for one pass over the stage 2 records (the
    reference's GRPO is a one-epoch run), and the paper's benchmarks in each round's evaluation."""
    c.pipeline.sft_lr = 0.0  # warm_start's (5e-6)
    c.pipeline.sft_epochs_per_round = float(c.warm_start.sft.num_epochs)
    c.grpo.num_epochs = 1.0
    c.pipeline.grpo_steps_per_round = -1
    evaluation = eval_config.get_config("paper")
    c.eval = evaluation.eval  # exact answers (the normalised accuracy reported beside), 1,024 new tokens
    # The paper's benchmarks (configs/eval.py:paper): fill in --config.benchmarks.NAME.jsonl / .image_root
    # for those to evaluate each round, beside the test split; those left empty are skipped.
    c.benchmarks = evaluation.benchmarks


def _follow_the_synthesis_prompt(c: ml_collections.ConfigDict) -> None:
    """The demo's language model is trained from scratch: unlike an instruct VLM it has never seen an
    instruction, and the stage 3 prompt's ground truth means little to it (trained on task prompts only,
    the best demo model accepted 10.9% of the records: README). So its SFT rounds train mostly on the
    synthesis prompt, with the seed record's own labels, and for longer, for the model to learn to copy
    the given labels into its reasoning; a tenth of the examples keep the task prompt that GRPO and the
    evaluation use."""
    c.warm_start.sft.synthesis_prompt_share = 0.9
    c.warm_start.sft.num_steps = 500
    c.warm_start.sft.eval_every_steps = 100
    # Later rounds fine-tune a model that already follows the prompt, on seed + accepted records: most of
    # their examples keep the task prompt the evaluation and GRPO use (at 0.9, round 2's accuracy fell
    # 14.2 -> 12.0; README).
    c.pipeline.sft_synthesis_prompt_share = 0.3
    c.data.max_prompt_tokens = 352  # the longest synthesis prompt of the built-in data is 332 tokens
    # Samples, not greedy: the model's greedy answers for faces with the same labels are often word for word
    # the same and fail the duplicate check (greedy with 3 attempts kept 178 of the first 1,024 records;
    # its rejected-*.jsonl show why); the first of 4 samples that passes every check is kept. One retry,
    # with the latest feedback only: a model never trained on feedback sections gains little from a long
    # history.
    c.synth.num_candidates = 4
    c.synth.max_attempts = 2
    c.synth.feedback_history = 1
