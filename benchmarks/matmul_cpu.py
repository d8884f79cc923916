"""Matrix-multiply throughput of XLA (through jax.jit) and PyTorch on this machine's CPU.

    python benchmarks/matmul_cpu.py [--m 2048 --k 512 --n 1408] [--repeats 5]

Why it exists: a training step of the `small` preset is mostly float32 matmuls, so the ratio a JAX
step can reach against PyTorch on a CPU is bounded by how fast each framework multiplies matrices
there. Both sides multiply the same shapes in the three forms a linear layer's step uses (forward
x @ w, weight gradient x.T @ dy, input gradient dy @ w.T) with the same thread count (the CPUs this
process may use; run it under `taskset -c 0` for one core). Each form: one warm-up, then the best of
`--repeats` timed calls. The last line printed is one JSON object with GFLOP/s per form and side.
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

from facialr1_jax.parallel import usable_cpus  # noqa: E402


def best_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=2048, help="rows: tokens in a micro-batch")
    parser.add_argument("--k", type=int, default=512, help="input features")
    parser.add_argument("--n", type=int, default=1408, help="output features")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    threads = usable_cpus()
    torch.set_num_threads(threads)
    m, k, n = args.m, args.k, args.n
    gflop = 2.0 * m * k * n / 1e9
    rng = np.random.default_rng(0)
    x, w, dy = (rng.standard_normal(shape, dtype=np.float32) for shape in ((m, k), (k, n), (m, n)))

    forms = {
        "forward x@w": (lambda a, b: a @ b, (x, w)),
        "weight_grad x.T@dy": (lambda a, b: a.T @ b, (x, dy)),
        "input_grad dy@w.T": (lambda a, b: a @ b.T, (dy, w)),
    }
    results: dict = {"m": m, "k": k, "n": n, "threads": threads, "gflops": {}}
    for name, (fn, operands) in forms.items():
        jitted = jax.jit(fn)
        jax_args = [jnp.asarray(a) for a in operands]
        jax_s = best_seconds(lambda: jax.block_until_ready(jitted(*jax_args)), args.repeats)
        torch_args = [torch.from_numpy(a) for a in operands]
        with torch.no_grad():
            torch_s = best_seconds(lambda: fn(*torch_args), args.repeats)
        # Three significant digits: toy shapes on a loaded machine run at well under 0.1 GFLOP/s.
        results["gflops"][name] = {"jax": float(f"{gflop / jax_s:.3g}"), "torch": float(f"{gflop / torch_s:.3g}")}
        print(f"{name:20s} jax {gflop / jax_s:7.1f} GFLOP/s   torch {gflop / torch_s:7.1f} GFLOP/s")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
