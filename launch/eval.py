r"""Evaluates a checkpoint on benchmark JSONL files and writes metrics.json, report.md and plots.

    python launch/eval.py --checkpoint=workdirs/grpo                   # the built-in test split
    python launch/eval.py --config=configs/eval.py:paper --checkpoint=CKPT \
        --config.benchmarks.rafdb.jsonl=test.jsonl --config.benchmarks.rafdb.image_root=RAF-DB/images

--checkpoint takes a training workdir (its latest checkpoint), a step folder or a Hugging Face folder;
it is short for --config.eval.checkpoint. Results go to --workdir (default workdirs/eval). Flags,
config values, files and folders are checked before JAX starts: a mistake ends the run at once
with one line on stderr.
"""

import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from facialr1_jax import config_validation  # noqa: E402
from facialr1_jax import launch_support  # noqa: E402
from facialr1_jax.eval import plan  # noqa: E402

DEFAULT_CONFIG = os.path.join(_REPO_ROOT, "configs", "eval.py")

# No default here: a config flag with a default parses its overrides while it is being defined,
# before the one-line error handling is in place. `_parse_flags` supplies the default instead.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Evaluation config (default {DEFAULT_CONFIG}: the built-in test split; "
    "configs/eval.py:paper for the paper's benchmarks).", lock_config=True,
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model to evaluate: a training workdir, a step folder or a Hugging Face folder "
    "(overrides --config.eval.checkpoint)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the report goes (default: workdirs/eval).")


def main(argv):
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config.stage != "eval":
        launch_support.fail(f"--config is a {config.stage!r} stage config; launch/eval.py needs an eval "
                            "config such as configs/eval.py")
    if _CHECKPOINT.value is not None:
        with config.unlocked():
            config.eval.checkpoint = _CHECKPOINT.value
    try:
        config_validation.validate(config)
        plan.check_eval_config(config)
    except (config_validation.ConfigError, plan.EvalConfigError) as error:
        launch_support.fail(f"config error: {error}")
    launch_support.run(config, _WORKDIR.value or os.path.join("workdirs", "eval"))


def _parse_flags(argv):
    if not any(arg in ("--config", "-config") or arg.startswith(("--config=", "-config=")) for arg in argv[1:]):
        argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
    return launch_support.parse_flags_or_fail(argv)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
