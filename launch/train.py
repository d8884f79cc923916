"""Runs one Facial-R1 stage from an ml_collections config.

    python launch/train.py --config=configs/grpo.py [--workdir=DIR] [--config.grpo.beta=0.0 ...]
    python launch/train.py --config=configs/sft.py:qwen2_5_vl_7b --config.model.checkpoint=HF_DIR ...

The config names its stage (sft, grpo, synth, pipeline, eval). Flags and config values are checked
before JAX starts: a wrong key or value ends the run at once with one line on stderr.
"""

import os
import sys

# Make `configs/` importable when this file is run as a script from a checkout.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from facialr1_jax import config_validation  # noqa: E402
from facialr1_jax import launch_support  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Stage config file, e.g. configs/grpo.py or configs/sft.py:qwen2_5_vl_7b.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and reports go (default: workdirs/<stage>). A run resumes from it."
)


def main(argv):
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        launch_support.fail("--config is required, e.g. --config=configs/grpo.py")
    try:
        config_validation.validate(config)
    except config_validation.ConfigError as error:
        launch_support.fail(f"config error: {error}")
    workdir = _WORKDIR.value or os.path.join("workdirs", config.stage)
    launch_support.run(config, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=launch_support.parse_flags_or_fail)
