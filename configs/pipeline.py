"""The iterative loop: R rounds of SFT -> GRPO -> synthesis -> evaluation (METHOD.md section 5).

Each round trains SFT on the seed set plus every record accepted so far (starting from the last
GRPO model), then GRPO, then synthesises again; the evaluations of all rounds go into one table.
"""

import ml_collections

from configs import eval as eval_config
from configs import grpo as grpo_config
from configs import synth as synth_config


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    c = grpo_config.get_config(variant)
    c.stage = "pipeline"
    c.synth = synth_config.get_config("demo" if variant == "demo" else "qwen2_5_vl_7b").synth
    c.eval = eval_config.get_config("demo").eval
    c.pipeline = ml_collections.ConfigDict()
    c.pipeline.rounds = 2  # Rounds of SFT -> GRPO -> synthesis.
    c.pipeline.sft_steps_per_round = 200  # SFT steps in rounds after the first (on seed + accepted records).
    c.pipeline.grpo_steps_per_round = 50  # GRPO steps per round.
    return c
