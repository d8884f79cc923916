"""The LM head's log p(target), forward and backward: the hand-written gradient against autodiff.

    python benchmarks/head_gradient.py [--rows 16] [--length 64] [--hidden 512] [--vocab 32768] [--repeats 8]

`facialr1_jax.models.qwen2_5_vl.head_log_probs.target_log_probs` differentiates
logits[target] - logsumexp(logits) in closed form; the peer here is `jax.grad` of the same expression
under `jax.checkpoint` (what `Qwen2_5_VL.token_log_probs` ran before: the logits recomputed in the
backward pass on both sides). Defaults: the `small` preset's head and the completion positions of
`benchmarks/grpo_vs_trl.py`'s update, (rows, length, hidden) = (2 prompts x G = 8, 64 tokens, 512) as
the model hands them over; float32, compiled with the training step's CPU options. Each side's first
call (compilation) also compares the two gradients; then the best of `--repeats` timed calls, the
sides alternating. The last line printed is one JSON object with `speedup` (autodiff seconds /
hand-written seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from facialr1_jax.models.qwen2_5_vl.head_log_probs import target_log_probs  # noqa: E402
from facialr1_jax.parallel import usable_cpus  # noqa: E402
from facialr1_jax.parallel.xla_options import compiler_options  # noqa: E402


def autodiff_log_probs(hidden, weight, targets, vocab_axis, dtype):
    del vocab_axis  # the benchmark's head is a (hidden, vocab) kernel

    @jax.checkpoint
    def picked(h):
        logits = (h.astype(dtype) @ weight.astype(dtype)).astype(jnp.float32)
        return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)

    return picked(hidden)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    positions = (args.rows, args.length)
    hidden = jnp.asarray(rng.standard_normal((*positions, args.hidden)).astype(np.float32))
    weight = jnp.asarray((rng.standard_normal((args.hidden, args.vocab)) * 0.02).astype(np.float32))
    targets = jnp.asarray(rng.integers(0, args.vocab, positions).astype(np.int32))
    cotangent = jnp.asarray(rng.standard_normal(positions).astype(np.float32))

    def gradient_program(log_probs):
        loss = lambda h, w: jnp.sum(log_probs(h, w, targets, 1, jnp.float32) * cotangent)
        return jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=compiler_options())

    programs = {"hand_written": gradient_program(target_log_probs), "autodiff": gradient_program(autodiff_log_probs)}
    outputs = {name: jax.block_until_ready(program(hidden, weight)) for name, program in programs.items()}
    for got, want in zip(outputs["hand_written"], outputs["autodiff"]):
        scale = float(jnp.abs(want).max())
        error = float(jnp.abs(got - want).max())
        if error > 1e-5 * scale:
            raise RuntimeError(f"the gradients differ by {error} (largest entry {scale})")

    best = {name: float("inf") for name in programs}
    for _ in range(args.repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(hidden, weight))
            best[name] = min(best[name], time.perf_counter() - start)
    results = {"rows": args.rows, "length": args.length, "hidden": args.hidden, "vocab": args.vocab, "cpus": usable_cpus(),
               "device": jax.devices()[0].device_kind, "hand_written_ms": round(best["hand_written"] * 1e3, 1),
               "autodiff_ms": round(best["autodiff"] * 1e3, 1),
               "speedup": round(best["autodiff"] / best["hand_written"], 2)}
    for key, value in results.items():
        print(f"{key:>16}: {value}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
