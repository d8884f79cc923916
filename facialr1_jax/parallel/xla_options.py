"""Compiler options for our hot jitted training programs (train step, evaluation, GRPO log-probs, vision
warm-up), per platform. The rollout engine compiles with XLA's defaults (these options gave its decode
program nothing measurable).

On CPU, XLA hands matrix multiplies to YNNPACK by default but compiles element-wise chains and
reductions with its own loop emitter. In a training step's backward pass that emitter fuses, for
example, the SiLU gradient with the transpose the weight-gradient matmul wants, and writes the
transposed (tokens x 1408) activation gradient column by column, one such copy per layer. Letting
YNNPACK take the element-wise and reduction fusions too removes most of those copies. Measure it with
`python benchmarks/sft_step_vs_torch.py --xla_options=both` (same weights, both option sets timed in
turn; `tuned_over_plain_xla` is the ratio, and both first-step losses are printed: the float32
results move by rounding only).

Other platforms get no options (None): GPU and TPU compilers have their own fusion strategies.
`FACIALR1_XLA_OPTIONS=none` in the environment turns the CPU options off too, e.g. to compare; a
caller that wants XLA's defaults for one program passes `compiler_options=None` (the compile-only
planner does: its fake CPU devices stand in for accelerators).
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import jax

# Everything YNNPACK can fuse: its default (matrix multiplies) plus element-wise ops and reductions.
CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": ",".join(
        f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("DOT", "INDIVIDUAL_DOT", "ELTWISE", "REDUCE")),
}
ENV_SWITCH = "FACIALR1_XLA_OPTIONS"


def compiler_options(devices: Iterable[Any] | Any | None = None) -> dict[str, str] | None:
    """The options for a program that runs on `devices` (a mesh, a device list or one device; None =
    JAX's default backend); pass them as `jax.jit(..., compiler_options=...)`."""
    setting = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if setting not in ("auto", "none"):
        raise ValueError(f"{ENV_SWITCH}={setting!r}: expected 'auto' (tuned options per platform) or 'none'")
    if setting == "none":
        return None
    return dict(CPU_OPTIONS) if _platform(devices) == "cpu" else None


def _platform(devices) -> str:
    if devices is None:
        return jax.default_backend()
    if hasattr(devices, "devices"):  # a Mesh
        devices = devices.devices.flat
    if hasattr(devices, "platform"):  # one device
        return devices.platform
    first = next(iter(devices), None)
    return jax.default_backend() if first is None else first.platform

