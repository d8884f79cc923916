"""Accelerator report: rollout decode throughput with the share of HBM bandwidth it reaches, and the SFT
train step's MFU, on whatever device JAX sees first (meant for a GPU or TPU; runs on CPU for testing).

    python benchmarks/accelerator_report.py [--preset qwen2_5_vl_3b] [--dtype bfloat16] [--parts copy,matmul,decode,sft]
        [--prompts 4] [--samples 8] [--prompt_length 256] [--new_tokens 128]      (decode)
        [--batch 8] [--seq 1024] [--target_tokens 512] [--image_px 448] [--steps 5] (sft)
        [--text_layers N] [--vision_layers N] [--out report.json]

Parts (each prints one line of results as it finishes, and the last line is one JSON object with all):
* copy: the bandwidth a jitted element-wise copy of a 1 GiB array reaches (bytes read + written per
  second), the practical ceiling to hold decode against beside the datasheet's;
* matmul: bfloat16 8192^3 matrix products per second, the practical compute ceiling;
* decode: `sampling.Engine` on the preset with random weights (`--dtype` parameters, the engine's
  default KV cache dtype): `--prompts` prompts of `--prompt_length` tokens, each with one 224 px image,
  G = `--samples`, exactly `--new_tokens` new tokens. One decode step's time = (generation with
  `--new_tokens` - the same with 1 new token) / (new_tokens - 1), so prefill and image encoding are out.
  Bytes one step must read (`decode_bytes_per_step`), counted from the shapes: every language-model
  weight that a step multiplies by (the decoder layers and the vocabulary projection; the embedding
  table only when it is that projection, as the 3B's tied one is), the prompt part of the shared KV cache
  (one row per prompt) and the completion part (one row per sample, read whole each step). The share of
  HBM bandwidth = those bytes / step time / the device's datasheet bandwidth (and / the measured copy
  bandwidth);
* sft: `train.step.TrainStep` with the SFT loss and AdamW (clipping 1.0) on `--batch` sequences of
  `--seq` tokens, each with one `--image_px` px image and `--target_tokens` trained tokens, the model
  in `--dtype` with rematerialisation (as configs/sft.py runs the 3B / 7B presets). Model FLOPs per step
  = 3 x the forward pass's matmul FLOPs, counted from its jaxpr by `parallel.planning.forward_flops` (no
  recomputation counted; only the trained positions go through the vocabulary projection, as the step
  computes them). MFU = model FLOPs / step time / the datasheet's dense bf16 peak (and / the measured
  matmul rate).

Datasheet figures (dense bf16 FLOP/s, HBM bytes/s) are known for H100 SXM and H200; on other devices
only the measured ceilings are used. `--text_layers` / `--vision_layers` shrink the preset's depth
(faster compiles, same widths: per-layer throughput is what MFU and bandwidth measure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from facialr1_jax import models  # noqa: E402

# device_kind prefix -> (dense bf16 FLOP/s, HBM bytes/s), from NVIDIA's H100 SXM and H200 datasheets.
DATASHEET = {
    "NVIDIA H100 80GB HBM3": (989.4e12, 3.35e12),
    "NVIDIA H200": (989.4e12, 4.8e12),
}

IMAGE_GRID_224 = (1, 16, 16)  # the decode prompts' image: 224 x 224 px


def datasheet_for(device_kind: str) -> tuple[float | None, float | None]:
    for prefix, figures in DATASHEET.items():
        if device_kind.startswith(prefix):
            return figures
    return None, None


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_copy(gib: float = 1.0, repeats: int = 10) -> dict:
    """Bytes read + written per second by a jitted element-wise pass over a `gib` GiB bfloat16 array."""
    elements = int(gib * 2**30) // 2
    x = jnp.ones((elements,), jnp.bfloat16)
    step = jax.jit(lambda a: a * jnp.bfloat16(1.0001))
    step(x).block_until_ready()
    seconds = median_seconds(lambda: step(x).block_until_ready(), repeats)
    return {"copy_bytes": 2 * elements * 2, "copy_s": seconds, "copy_bytes_per_s": 2 * elements * 2 / seconds}


def measure_matmul(size: int = 8192, repeats: int = 10) -> dict:
    """bfloat16 size^3 matrix products per second (float32 accumulation, bfloat16 result)."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), jnp.bfloat16)
    b = jax.random.normal(keys[1], (size, size), jnp.bfloat16)
    product = jax.jit(lambda x, y: x @ y)
    product(a, b).block_until_ready()
    seconds = median_seconds(lambda: product(a, b).block_until_ready(), repeats)
    return {"matmul_size": size, "matmul_s": seconds, "matmul_flops_per_s": 2.0 * size**3 / seconds}


def build_config(args) -> models.Qwen2_5_VLConfig:
    overrides = {}
    if args.text_layers:
        overrides["text_config"] = {"num_hidden_layers": args.text_layers, "max_window_layers": args.text_layers}
    if args.vision_layers:
        overrides["vision_config"] = {"depth": args.vision_layers,
                                      "fullatt_block_indexes": tuple(range(args.vision_layers - 1, -1, -4))[::-1]}
    return models.get_preset(args.preset, **overrides)


def decode_bytes_per_step(model, *, prompts: int, rows: int, prompt_slots: int, completion_slots: int,
                          cache_itemsize: int) -> dict:
    """The bytes one decode step reads: weights it multiplies by, and the KV cache (see the module doc)."""
    from flax import nnx

    def nbytes(tree) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    text = model.config.text_config
    language = nnx.state(model.language_model, nnx.Param)
    embedding = nbytes(model.language_model.embed_tokens[...])
    weights = nbytes(language) - embedding  # the decoder layers and the final norm
    weights += embedding if model.lm_head is None else nbytes(nnx.state(model.lm_head, nnx.Param))
    per_slot = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * cache_itemsize
    cache = per_slot * (prompts * prompt_slots + rows * completion_slots)
    return {"weight_bytes": weights, "kv_cache_bytes": cache, "decode_bytes_per_step": weights + cache}


def run_decode(args, config, results: dict) -> None:
    from flax import nnx

    from facialr1_jax.sampling import Engine, PromptBatch
    from generate_vs_hf import engine_runner, synthetic_prompts

    dtype = jnp.dtype(args.dtype)
    started = time.perf_counter()
    model = models.init_model(config, dtype=dtype, param_dtype=dtype, seed=0)
    models.bound_frame_patches(model, int(np.prod(IMAGE_GRID_224)) * config.vision_config.patch_size ** 2)
    results["decode_init_s"] = round(time.perf_counter() - started, 1)
    engine = Engine.for_model(model)
    params = nnx.state(model)
    prompts = synthetic_prompts(config, args.prompts, args.prompt_length, seed=0)
    batch = PromptBatch.from_prompts(prompts, config, pad_id=config.text_config.pad_token_id or 0,
                                     max_length=args.prompt_length)
    full = engine_runner(engine, params, batch, samples=args.samples, new_tokens=args.new_tokens)
    prefill = engine_runner(engine, params, batch, samples=args.samples, new_tokens=1)
    for name, run in (("decode_first_call_s", full), ("prefill_first_call_s", prefill)):
        start = time.perf_counter()
        run()  # compiles
        results[name] = round(time.perf_counter() - start, 1)
    full_s = median_seconds(full, args.repeats)
    prefill_s = median_seconds(prefill, args.repeats)
    step_s = (full_s - prefill_s) / (args.new_tokens - 1)
    rows = args.prompts * args.samples
    counted = decode_bytes_per_step(model, prompts=args.prompts, rows=rows, prompt_slots=batch.prompt_length,
                                    completion_slots=args.new_tokens, cache_itemsize=engine.cache_dtype.itemsize)
    results.update(decode_rows=rows, prompt_bucket=batch.prompt_length, cache_dtype=engine.cache_dtype.name,
                   generate_s=round(full_s, 4), prefill_fanout_s=round(prefill_s, 4),
                   decode_step_ms=round(1e3 * step_s, 3), decode_tokens_per_s=round(rows / step_s, 1),
                   end_to_end_tokens_per_s=round(rows * args.new_tokens / full_s, 1), **counted)
    achieved = counted["decode_bytes_per_step"] / step_s
    results["decode_bytes_per_s"] = achieved
    if results.get("datasheet_hbm_bytes_per_s"):
        results["decode_hbm_share_of_datasheet"] = round(achieved / results["datasheet_hbm_bytes_per_s"], 4)
    if results.get("copy_bytes_per_s"):
        results["decode_hbm_share_of_measured_copy"] = round(achieved / results["copy_bytes_per_s"], 4)
    del model, params, engine


def run_sft(args, config, results: dict) -> None:
    from flax import nnx

    from facialr1_jax.data.images import ImageConfig
    from facialr1_jax.parallel import TRAINING_RULES, make_mesh, shard_model
    from facialr1_jax.parallel import planning
    from facialr1_jax.train import optim, sft
    from facialr1_jax.train import state as state_lib
    from facialr1_jax.train import step as step_lib
    from sft_step_vs_torch import optimizer_config

    dtype = jnp.dtype(args.dtype)
    grid = tuple(int(v) for v in ImageConfig(min_pixels=56 * 56, max_pixels=args.image_px ** 2)
                 .grid_thw(args.image_px, args.image_px))
    shape = planning.ExampleShape(sequence_tokens=args.seq, target_tokens=args.target_tokens, image_grid=grid)
    batch_arrays = planning.synthetic_sft_batch(config, shape, num_micro_batches=1, micro_batch_size=args.batch,
                                                max_length=args.seq)
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = models.Qwen2_5_VL(config, dtype=dtype, param_dtype=dtype, remat=True, rngs=nnx.Rngs(0))
    models.bound_frame_patches(model, args.image_px ** 2)
    shard_model(model, mesh, TRAINING_RULES)
    tx, schedule = optim.make_optimizer(optimizer_config(1e-5), total_steps=args.steps + 10)
    model_def, state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
    del model
    train_step = step_lib.TrainStep(model_def, sft.sft_loss, tx, schedule, shardings, mesh, rules=TRAINING_RULES)
    batch = step_lib.put_batch(batch_arrays, step_lib.batch_shardings(batch_arrays, mesh))
    micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch_arrays)
    forward = planning.forward_flops(lambda p, b: sft.sft_loss(model_def.merge(p), b, None)[0], state.params, micro)
    model_flops = 3.0 * forward

    holder = {"state": state}

    def step():
        holder["state"], metrics = train_step(holder["state"], batch)
        return float(metrics["loss"])  # waits for the step

    start = time.perf_counter()
    first_loss = step()
    results["sft_first_step_s"] = round(time.perf_counter() - start, 1)  # compilation included
    step()
    seconds = median_seconds(step, args.steps)
    tokens = args.batch * args.seq
    results.update(sft_image_grid=list(grid), sft_tokens_per_step=tokens, sft_first_loss=round(first_loss, 4),
                   sft_step_s=round(seconds, 4), sft_tokens_per_s=round(tokens / seconds, 1),
                   sft_model_flops_per_step=model_flops, sft_model_flops_per_s=model_flops / seconds)
    if results.get("datasheet_bf16_flops_per_s"):
        results["sft_mfu"] = round(model_flops / seconds / results["datasheet_bf16_flops_per_s"], 4)
    if results.get("matmul_flops_per_s"):
        results["sft_share_of_measured_matmul"] = round(model_flops / seconds / results["matmul_flops_per_s"], 4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="qwen2_5_vl_3b")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--parts", default="copy,matmul,decode,sft")
    parser.add_argument("--text_layers", type=int, default=0, help="override the preset's decoder depth (0 = keep)")
    parser.add_argument("--vision_layers", type=int, default=0, help="override the vision depth (0 = keep)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--target_tokens", type=int, default=512)
    parser.add_argument("--image_px", type=int, default=448)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--copy_gib", type=float, default=1.0)
    parser.add_argument("--matmul_size", type=int, default=8192)
    parser.add_argument("--out", default="", help="also write the results here as JSON after every part")
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    peak_flops, peak_bandwidth = datasheet_for(device.device_kind)
    results: dict = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                     "preset": args.preset, "dtype": args.dtype,
                     "datasheet_bf16_flops_per_s": peak_flops, "datasheet_hbm_bytes_per_s": peak_bandwidth}
    config = build_config(args)
    results["text_layers"] = config.text_config.num_hidden_layers
    results["vision_layers"] = config.vision_config.depth
    parts = [p for p in args.parts.split(",") if p]
    runners = {
        "copy": lambda: results.update(measure_copy(args.copy_gib)),
        "matmul": lambda: results.update(measure_matmul(args.matmul_size)),
        "decode": lambda: run_decode(args, config, results),
        "sft": lambda: run_sft(args, config, results),
    }
    unknown = sorted(set(parts) - set(runners))
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {unknown}; choose from {sorted(runners)}")
    failures = {}
    for part in parts:
        before = set(results)
        start = time.perf_counter()
        try:
            runners[part]()
        except Exception as error:  # one part failing (e.g. out of memory) still reports the others
            traceback.print_exc()
            failures[part] = f"{type(error).__name__}: {str(error)[:300]}"
        results[f"{part}_part_s"] = round(time.perf_counter() - start, 1)
        print(f"[{part}] " + json.dumps({k: v for k, v in results.items() if k not in before}), flush=True)
        if args.out:
            with open(args.out, "w") as handle:
                json.dump({**results, "failures": failures}, handle, indent=1)
    results["failures"] = failures
    print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
