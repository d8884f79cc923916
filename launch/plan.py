"""Plans a run without running it: per-device memory, FLOPs per step and implied MFU of every program.

    python launch/plan.py --config=configs/grpo.py:qwen2_5_vl_7b --devices=8
    python launch/plan.py --config=configs/sft.py:qwen2_5_vl_7b --devices=32 --config.mesh.tensor=2 \
        --step_seconds=20 --peak_tflops=989

Compiles the SFT train step (a GRPO config: its SFT warm start too), the GRPO rollout (prefill and
decode), reference log-probs and policy update for the config's model preset and mesh from shapes
alone: no weights are allocated (`facialr1_jax.parallel.planning`). `--devices=N` fakes N CPU devices
(it must be set before JAX starts, which this launcher does), so a 32-chip job plans on a laptop;
`--devices=0` plans on the devices of the one host it runs on (e.g. a single-host TPU VM, with the
accelerator's own compiler). Prints a table, then ends with ONE JSON line holding `per_device_bytes` and
`flops_per_step` (and everything else) for scripts.
"""

import copy
import json
import os
import re
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from facialr1_jax import config_validation  # noqa: E402
from facialr1_jax import launch_support  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config to plan, e.g. configs/grpo.py:qwen2_5_vl_7b or configs/sft.py:qwen2_5_vl_3b.",
    lock_config=True)
_DEVICES = flags.DEFINE_integer(
    "devices", 8, "Fake this many CPU devices (set before JAX starts); 0 = the machine's own devices.")
_STAGES = flags.DEFINE_list(
    "stages", ["sft", "grpo"], "Stages to plan: a GRPO config plans its SFT warm start (sft) and itself (grpo).")
_STEP_SECONDS = flags.DEFINE_float(
    "step_seconds", 0.0, "A measured (or hoped-for) optimiser step time; with it the plan reports MFU and HFU.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", 312.0, "Peak dense bf16 TFLOP/s of ONE device (A100/A800 312, H100 SXM 989, TPU v5p 459, "
    "v5e 197, v4 275).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the JSON result to this file.")


def fake_cpu_devices(count: int) -> None:
    """Makes JAX see `count` CPU devices; must run before JAX's backend starts (the launcher does not
    start it before this point; a library caller that already ran JAX gets JAX's own error)."""
    flags_value = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags_value} --xla_force_host_platform_device_count={count}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported but maybe not started: the config route still works then
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)


def without_data_locations(config):
    """A copy of `config` to validate: a plan reads no data, so the 7B recipes' `data.source=jsonl` must
    not demand a JSONL file and image folder (everything else is checked as train.py checks it)."""
    checked = copy.deepcopy(config)
    with checked.unlocked():
        for section in (checked, checked.get("warm_start")):
            if section is not None and "data" in section:
                section.data.source = "builtin"
    return checked


def main(argv):
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        launch_support.fail("--config is required, e.g. --config=configs/grpo.py:qwen2_5_vl_7b")
    try:
        config_validation.validate(without_data_locations(config))
    except config_validation.ConfigError as error:
        launch_support.fail(f"config error: {error}")
    if config.stage not in ("sft", "grpo"):
        launch_support.fail(f"plan.py plans sft and grpo configs; this config's stage is {config.stage!r}")
    unknown = sorted(set(_STAGES.value) - {"sft", "grpo"})
    if unknown:
        launch_support.fail(f"--stages: unknown stages {unknown} (known: sft, grpo)")
    if _DEVICES.value < 0:
        launch_support.fail(f"--devices must be >= 0, got {_DEVICES.value}")
    if _DEVICES.value > 0:
        fake_cpu_devices(_DEVICES.value)

    from facialr1_jax.parallel import planning

    try:
        plan = planning.plan_config(config, stages=_STAGES.value)
    except ValueError as error:  # e.g. a mesh that does not fit the devices, a batch that does not split
        launch_support.fail(f"plan error: {error}")
    peak = _PEAK_TFLOPS.value * 1e12
    print(planning.format_table(plan, _STEP_SECONDS.value, peak), flush=True)
    result = plan.to_dict(_STEP_SECONDS.value, peak)
    result["peak_tflops_per_device"] = _PEAK_TFLOPS.value
    line = json.dumps(result, sort_keys=True)
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as stream:
            stream.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=launch_support.parse_flags_or_fail)
