"""The rollout engine's CPU decode layouts, each against the layout it replaced, at decode shapes.

    python benchmarks/decode_layouts.py [--rows 32] [--kv_heads 2] [--per_kv 4] [--head_dim 64] [--slots 128]
                                        [--hidden 512] [--intermediate 1408] [--vocab 32768] [--preset small]
                                        [--repeats 5]

Defaults: `benchmarks/generate_vs_hf.py`'s decode (4 prompts x G = 8 = 32 rows, 128 completion slots)
through the `small` preset. Three measurements, float32, each side's best of `--repeats`, sides
alternating:
* scores: one layer's completion scores, queries (rows, kv, Q, D) against keys stored (slots, head_dim)
  (`slots_minor`, the old cache) or dimension-major (head_dim, slots) (`dim_major`, `SharedPromptCache`
  now); 128 calls in one jitted loop, microseconds per call.
* matmul: rows x the decode step's weight matrices, each as the model stores it, (in, out), and as
  `DecodeKernels` holds it, (out, in): the MLP's gate+up and down (8 distinct copies of each, so the
  weights are read from memory as in a step through 8 layers) and the vocabulary projection;
  milliseconds per matmul.
* kernels_ms: the engine's program that builds `DecodeKernels` for `--preset` (one transposed copy of
  the language model's matrices), once per `generate` call.
The last line printed is one JSON object with `dim_major_speedup`, `out_in_mlp_speedup`,
`out_in_head_speedup` (old layout's time / new layout's) and `kernels_ms`.
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
from flax import nnx  # noqa: E402

from facialr1_jax import models  # noqa: E402
from facialr1_jax.parallel import usable_cpus  # noqa: E402
from facialr1_jax.sampling import Engine  # noqa: E402

LOOP_CALLS = 128  # score calls per jitted loop: one call alone is mostly dispatch
WEIGHT_COPIES = 8  # per MLP matrix, as in a step through 8 layers


def best_times(programs: dict, repeats: int) -> dict:
    """{name: best seconds of `repeats` calls}, the programs alternating; each is run once first."""
    for run in programs.values():
        jax.block_until_ready(run())
    best = {name: float("inf") for name in programs}
    for _ in range(repeats):
        for name, run in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def score_programs(args, rng) -> dict:
    queries = jnp.asarray(rng.standard_normal((args.rows, args.kv_heads, args.per_kv, args.head_dim), np.float32))
    keys = jnp.asarray(rng.standard_normal((args.rows, args.kv_heads, args.slots, args.head_dim), np.float32))
    dim_major = jnp.swapaxes(keys, 2, 3)
    if not np.array_equal(np.asarray(jnp.einsum("rkqd,rktd->rkqt", queries, keys)),
                          np.asarray(jnp.einsum("rkqd,rkdt->rkqt", queries, dim_major))):
        raise RuntimeError("the two key layouts give different scores")

    def looped(equation, stored):
        # Each call's queries depend on the last call's scores, so XLA cannot hoist or merge the calls.
        def body(_, q):
            return q + 1e-6 * jnp.einsum(equation, q, stored)[..., :1]
        return jax.jit(lambda q: jax.lax.fori_loop(0, LOOP_CALLS, body, q))

    slots_minor, dimension_major = looped("rkqd,rktd->rkqt", keys), looped("rkqd,rkdt->rkqt", dim_major)
    return {"slots_minor": lambda: slots_minor(queries), "dim_major": lambda: dimension_major(queries)}


def matmul_programs(args, rng) -> dict:
    x = jnp.asarray(rng.standard_normal((args.rows, args.hidden), np.float32))
    hidden = jnp.asarray(rng.standard_normal((args.rows, args.intermediate), np.float32))
    normal = lambda *shape: jnp.asarray((rng.standard_normal(shape) * 0.02).astype(np.float32))
    gate_up = [normal(args.hidden, 2 * args.intermediate) for _ in range(WEIGHT_COPIES)]
    down = [normal(args.intermediate, args.hidden) for _ in range(WEIGHT_COPIES)]
    head = normal(args.hidden, args.vocab)
    transposed = lambda ws: [jnp.asarray(np.ascontiguousarray(np.asarray(w).T)) for w in ws]
    in_out = lambda a, w: a @ w
    out_in = lambda a, w: jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())))

    def mlp(product):
        # Sums of a slice keep every matmul live without adding a full pass over its output.
        return jax.jit(lambda ws, vs: sum(product(x, w)[:, :8].sum() + product(hidden, v)[:, :8].sum()
                                          for w, v in zip(ws, vs)))

    mlp_in_out, mlp_out_in = mlp(in_out), mlp(out_in)
    head_in_out = jax.jit(lambda w: in_out(x, w).max(axis=-1))
    head_out_in = jax.jit(lambda w: out_in(x, w).max(axis=-1))
    gate_up_t, down_t, head_t = transposed(gate_up), transposed(down), transposed([head])[0]
    return {"mlp_in_out": lambda: mlp_in_out(gate_up, down), "mlp_out_in": lambda: mlp_out_in(gate_up_t, down_t),
            "head_in_out": lambda: head_in_out(head), "head_out_in": lambda: head_out_in(head_t)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("rows", 32), ("kv_heads", 2), ("per_kv", 4), ("head_dim", 64), ("slots", 128),
                          ("hidden", 512), ("intermediate", 1408), ("vocab", 32768), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--preset", default="small", help="model whose DecodeKernels program is timed")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    scores = best_times(score_programs(args, rng), args.repeats)
    matmuls = best_times(matmul_programs(args, rng), args.repeats)
    model = models.init_model(models.get_preset(args.preset), seed=0)
    engine, params = Engine.for_model(model, decode_kernels=True), (nnx.state(model),)
    kernels = best_times({"kernels": lambda: engine._kernels_program(params)}, args.repeats)["kernels"]

    per_call_us = lambda seconds: round(seconds / LOOP_CALLS * 1e6, 1)
    per_matmul_ms = lambda seconds, count: round(seconds / count * 1e3, 3)
    results = {
        "rows": args.rows, "slots": args.slots, "hidden": args.hidden, "intermediate": args.intermediate,
        "vocab": args.vocab, "preset": args.preset, "cpus": usable_cpus(), "device": jax.devices()[0].device_kind,
        "scores_slots_minor_us": per_call_us(scores["slots_minor"]), "scores_dim_major_us": per_call_us(scores["dim_major"]),
        "dim_major_speedup": round(scores["slots_minor"] / scores["dim_major"], 2),
        "mlp_in_out_ms": per_matmul_ms(matmuls["mlp_in_out"], 2 * WEIGHT_COPIES),
        "mlp_out_in_ms": per_matmul_ms(matmuls["mlp_out_in"], 2 * WEIGHT_COPIES),
        "out_in_mlp_speedup": round(matmuls["mlp_in_out"] / matmuls["mlp_out_in"], 2),
        "head_in_out_ms": per_matmul_ms(matmuls["head_in_out"], 1),
        "head_out_in_ms": per_matmul_ms(matmuls["head_out_in"], 1),
        "out_in_head_speedup": round(matmuls["head_in_out"] / matmuls["head_out_in"], 2),
        "kernels_ms": round(kernels * 1e3, 1),
    }
    for key, value in results.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
