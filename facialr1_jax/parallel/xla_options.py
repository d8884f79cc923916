"""Compiler options for our hot jitted programs (train step, evaluation, log-probs, rollouts), per platform.

On CPU, XLA hands matrix multiplies to YNNPACK by default but compiles element-wise chains and
reductions with its own loop emitter. In a training step's backward pass that emitter fuses, for
example, the SiLU gradient with the transpose the weight-gradient matmul wants, and writes the
transposed (tokens x 1408) activation gradient column by column: about a fifth of the `small` SFT
step went to eight such copies. Letting YNNPACK take the element-wise and reduction fusions too
removes most of that time (profile: 664 -> 212 ms of copies per step). Measure it with
`python benchmarks/sft_step_vs_torch.py --xla_options=both` (same weights, both option sets timed
in turn). The float32 results move by rounding only (first-step loss within 1e-6).

Other platforms get no options (None): GPU and TPU compilers have their own fusion strategies.
`FACIALR1_XLA_OPTIONS=none` in the environment turns the CPU options off too, e.g. to compare;
`platform_defaults()` does so for a block of code (the compile-only planner, whose fake CPU devices
stand in for accelerators, plans programs as an accelerator would compile them).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator

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


@contextlib.contextmanager
def platform_defaults() -> Iterator[None]:
    """Within the block, `compiler_options` gives None on every platform (XLA's own defaults)."""
    before = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "none"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_SWITCH, None)
        else:
            os.environ[ENV_SWITCH] = before
