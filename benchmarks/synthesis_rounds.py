"""Measures issue 8's acceptance numbers: one synthesis round's yield, the oracle re-check, and
whether the next round's model is at least as accurate as the one it started from.

    python benchmarks/synthesis_rounds.py --workdir=workdirs/pipeline [--config=configs/pipeline.py]
        [--config.pipeline.initial_checkpoint=workdirs/grpo] [--config.synth.max_records=2000] ...
    python benchmarks/synthesis_rounds.py --workdir=workdirs/pipeline --verify_only

Runs (or resumes) `run_pipeline` with the given config (default: configs/pipeline.py, demo: two rounds
on the built-in data), then for every round re-verifies each accepted record with the Python oracle
(`synth.verify.reverify`: `fea.answers.check_synthesis`, unique ids, unique descriptions) and reads
the round's test metrics. The last line printed is one JSON object:

    {"rounds": [{"round", "accepted", "annotated", "yield", "oracle_ok", "emotion_accuracy", ...}, ...],
     "round1_accepted_at_least": N, "criteria": {"round1_accepts_enough", "all_accepted_pass_oracle",
     "round2_at_least_as_accurate"}}

The exit status is 0 when every criterion holds, 1 otherwise. On the demo data the whole pipeline
trains two demo models on the CPU; expect hours on a small machine (`--config.synth.max_records`,
`--config.pipeline.eval_num_examples` and `--config.pipeline.initial_checkpoint` make it shorter).
"""

import json
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(_REPO_ROOT, "configs", "pipeline.py"),
                                          "Pipeline config (configs/pipeline.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline workdir (resumed when it holds a run).", required=True)
_VERIFY_ONLY = flags.DEFINE_bool("verify_only", False, "Only check the rounds already in --workdir.")
_MIN_ACCEPTED = flags.DEFINE_integer("min_accepted", 1000, "Records round 1 must accept.")


def summarize(workdir: str, min_accepted: int) -> dict:
    from facialr1_jax.synth.pipeline import ROUND_FILE
    from facialr1_jax.synth.verify import reverify

    rows = []
    round_number = 1
    while os.path.exists(os.path.join(workdir, f"round-{round_number}", ROUND_FILE)):
        with open(os.path.join(workdir, f"round-{round_number}", ROUND_FILE), encoding="utf-8") as stream:
            row = json.load(stream)
        synthesis = row.get("synthesis") or {}
        # A round without synthesis (the last one under pipeline.final_synthesis = False) has nothing to check.
        check = reverify(os.path.join(workdir, f"round-{round_number}", "synth")) if synthesis else None
        rows.append({"round": round_number, "model": row.get("model"), "sft_records": row.get("sft_records"),
                     "annotated": synthesis.get("annotated"), "accepted": synthesis.get("accepted"),
                     "yield": synthesis.get("yield"), "oracle_ok": None if check is None else check.ok,
                     "oracle_failures": None if check is None else len(check.failures), **(row.get("eval") or {})})
        round_number += 1
    criteria = {
        "round1_accepts_enough": bool(rows) and (rows[0]["accepted"] or 0) >= min_accepted,
        "all_accepted_pass_oracle": bool(rows) and all(row["oracle_ok"] is not False for row in rows)
        and rows[0]["oracle_ok"] is True,
        "round2_at_least_as_accurate": len(rows) >= 2 and rows[1].get("emotion_accuracy") is not None
        and rows[1]["emotion_accuracy"] >= rows[0]["emotion_accuracy"],
    }
    return {"workdir": workdir, "rounds": rows, "round1_accepted_at_least": min_accepted, "criteria": criteria}


def main(argv):
    del argv
    workdir = os.path.abspath(_WORKDIR.value)
    status = "verify_only"
    if not _VERIFY_ONLY.value:
        from facialr1_jax import config_validation
        from facialr1_jax.synth.pipeline import run_pipeline

        config_validation.validate(_CONFIG.value)
        status = run_pipeline(_CONFIG.value, workdir)["status"]
    summary = {"pipeline_status": status, **summarize(workdir, _MIN_ACCEPTED.value)}
    print(json.dumps(summary))
    return 0 if all(summary["criteria"].values()) else 1


if __name__ == "__main__":
    app.run(main)
