"""Rollout throughput: our engine against `transformers` generate, and one prefill + fan-out against
repeated prompts.

    python benchmarks/generate_vs_hf.py [--preset small] [--prompts 4] [--samples 8] [--new_tokens 128]
                                        [--prompt_length 256] [--repeats 2] [--skip_reference]

Setting (GRPO's rollout): `--prompts` prompts of `--prompt_length` tokens, each with one 224 x 224 image
(16 x 16 patches, 64 image tokens), `--samples` completions per prompt, exactly `--new_tokens` new tokens
each (plain sampling at temperature 1: no top-k / top-p; no stop token on our side, `min_new_tokens` on
the reference's, so both generate the same number of tokens).

* reference: the PyTorch `Qwen2_5_VLForConditionalGeneration.generate(do_sample=True, top_k=0,
  num_return_sequences=G)`, which repeats every prompt G times before its prefill;
* ours: `facialr1_jax.sampling.generate(num_samples=G)` on the same weights (saved by the reference,
  loaded with `models.from_pretrained`), one prefill per prompt and the KV cache fanned out;
* ours, repeated: the same engine fed every prompt G times (num_samples=1), i.e. what fan-out saves;
* ours, one window: `Engine(grow_completion_cache=False)`, the decode over all T completion slots from
  the first step, i.e. what the growing completion windows save (`windows_speedup`).

Same threads on both sides: torch.set_num_threads = the CPUs this process may use, which is what XLA
sizes its pool by (run under `taskset -c 0` for a one-thread comparison). Compilation and one
short reference call are warm-up, not timed; the sides are then timed in turn, `--repeats` rounds,
and each side's best run counts (so a machine shared with other jobs slows all sides alike; the
1-minute load average at the end is printed too).
Throughput = generated tokens (prompts x G x new tokens) per second, end to end (images, prefill and
decode). The last line is one JSON object with `speedup_vs_hf`, `fanout_speedup` and `windows_speedup`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from facialr1_jax import models  # noqa: E402
from facialr1_jax.parallel import usable_cpus  # noqa: E402
from facialr1_jax.sampling import Engine, PromptBatch  # noqa: E402

IMAGE_GRID = (1, 16, 16)  # a 224 x 224 image: 16 x 16 patches of 14 px, 64 merged image tokens


def synthetic_prompts(config: models.Qwen2_5_VLConfig, count: int, length: int, seed: int):
    """(ids, pixel_values, grid) per prompt: text, <vision_start>, placeholders, <vision_end>, text.

    Prompt i has length - 2i tokens, so the batch is left-padded like a real one.
    """
    rs = np.random.RandomState(seed)
    special = {config.image_token_id, config.vision_start_token_id, config.vision_end_token_id,
               config.video_token_id, config.vision_token_id}
    ordinary = np.array([t for t in range(min(config.text_config.vocab_size, 30000)) if t not in special])
    image_tokens = int(np.prod(IMAGE_GRID)) // config.vision_config.merge_unit
    prompts = []
    for index in range(count):
        text = length - 2 * index - image_tokens - 2
        if text < 8:
            raise ValueError(f"--prompt_length {length} leaves no room for text beside a {image_tokens}-token image")
        head = rs.choice(ordinary, 8).tolist()
        ids = (head + [config.vision_start_token_id] + [config.image_token_id] * image_tokens
               + [config.vision_end_token_id] + rs.choice(ordinary, text - 8).tolist())
        patches = rs.randn(int(np.prod(IMAGE_GRID)), config.vision_config.patch_dim).astype(np.float32)
        prompts.append((ids, patches, np.array([IMAGE_GRID])))
    return prompts


def best_of(repeats: int, run) -> float:
    """The fastest of `repeats` timed calls of `run` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_runner(reference, config, prompts, *, samples: int, new_tokens: int):
    import torch

    pad = config.text_config.pad_token_id
    length = max(len(p[0]) for p in prompts)
    ids = np.full((len(prompts), length), pad, np.int64)
    mask = np.zeros_like(ids)
    for row, (tokens, _, _) in enumerate(prompts):
        ids[row, length - len(tokens):] = tokens
        mask[row, length - len(tokens):] = 1
    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  pixel_values=torch.tensor(np.concatenate([p[1] for p in prompts])),
                  image_grid_thw=torch.tensor(np.concatenate([p[2] for p in prompts])),
                  mm_token_type_ids=torch.tensor((ids == config.image_token_id).astype(np.int64)))

    def run():
        with torch.no_grad():
            out = reference.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     num_return_sequences=samples, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, pad_token_id=pad)
        generated = out.shape[1] - length
        if out.shape[0] != len(prompts) * samples or generated != new_tokens:
            raise RuntimeError(f"reference generated {tuple(out.shape)}, expected {new_tokens} new tokens "
                               f"for {len(prompts) * samples} rows")

    return run


def engine_runner(engine: Engine, params, batch: PromptBatch, *, samples: int, new_tokens: int, seed: int = 0):
    calls = [0]

    def run():
        calls[0] += 1
        out = engine.generate(params, batch, max_new_tokens=new_tokens, num_samples=samples, temperature=1.0,
                              rng=jax.random.key(seed + calls[0]), stop_token_ids=())
        lengths = np.asarray(out.lengths)  # blocks until the whole generation is done
        if lengths.shape != (batch.batch_size * samples,) or not np.all(lengths == new_tokens):
            raise RuntimeError(f"engine generated lengths {lengths}, expected {new_tokens} everywhere")

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--prompt_length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_reference", action="store_true",
                        help="time our engine only (e.g. on an accelerator, where the CPU reference means nothing)")
    args = parser.parse_args(argv)

    config = models.get_preset(args.preset)
    prompts = synthetic_prompts(config, args.prompts, args.prompt_length, args.seed)
    pad = config.text_config.pad_token_id
    tokens_generated = args.prompts * args.samples * args.new_tokens
    results: dict = {"preset": args.preset, "prompts": args.prompts, "samples": args.samples,
                     "new_tokens": args.new_tokens, "prompt_length": args.prompt_length,
                     "device": jax.devices()[0].device_kind, "cpus": usable_cpus()}

    with tempfile.TemporaryDirectory() as directory:
        if args.skip_reference:
            model = models.init_model(config, seed=args.seed)
        else:
            import torch

            torch.set_num_threads(usable_cpus())
            results["torch_threads"] = torch.get_num_threads()
            from transformers import Qwen2_5_VLConfig as HFConfig
            from transformers import Qwen2_5_VLForConditionalGeneration

            torch.manual_seed(args.seed)
            reference = Qwen2_5_VLForConditionalGeneration(HFConfig(**config.to_hf_dict())).eval()
            reference.save_pretrained(directory)
            model = models.from_pretrained(directory)

        from flax import nnx

        # As the launchers do from data.max_pixels: the vision tower's full-attention blocks attend frame by frame.
        models.bound_frame_patches(model, int(np.prod(IMAGE_GRID)) * config.vision_config.patch_size ** 2)
        engine = Engine.for_model(model)
        params = nnx.state(model)
        fanned = PromptBatch.from_prompts(prompts, config, pad_id=pad, max_length=args.prompt_length)
        repeated = PromptBatch.from_prompts([p for p in prompts for _ in range(args.samples)], config, pad_id=pad,
                                            max_length=args.prompt_length)
        results["prompt_bucket"] = fanned.prompt_length

        runs = {
            "ours": engine_runner(engine, params, fanned, samples=args.samples, new_tokens=args.new_tokens),
            "repeated": engine_runner(engine, params, repeated, samples=1, new_tokens=args.new_tokens),
            "one_window": engine_runner(Engine.for_model(model, grow_completion_cache=False), params, fanned,
                                        samples=args.samples, new_tokens=args.new_tokens),
            # Prefill + fan-out alone: the same call with one new token (its own compiled program).
            "prefill": engine_runner(engine, params, fanned, samples=args.samples, new_tokens=1),
        }
        if not args.skip_reference:
            runs["hf"] = reference_runner(reference, config, prompts, samples=args.samples,
                                          new_tokens=args.new_tokens)
            reference_runner(reference, config, prompts, samples=args.samples, new_tokens=4)()  # warm-up
        for name, run in runs.items():
            if name != "hf":
                start = time.perf_counter()
                run()  # compilation included
                results[f"{name}_first_call_s"] = round(time.perf_counter() - start, 2)
        # Interleaved repeats, best of each: a machine shared with other jobs slows all sides alike.
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = min(best[name], best_of(1, run))
        ours_s, repeated_s, prefill_s = best["ours"], best["repeated"], best["prefill"]
        decode_s = ours_s - prefill_s
        results.update(ours_s=round(ours_s, 3), ours_tokens_per_s=round(tokens_generated / ours_s, 1),
                       ours_prefill_fanout_s=round(prefill_s, 3),
                       # None when the decode time is lost in timing noise (tiny models, few tokens).
                       ours_decode_tokens_per_s=(round((tokens_generated - args.prompts * args.samples) / decode_s, 1)
                                                 if decode_s > 0 else None),
                       repeated_s=round(repeated_s, 3),
                       fanout_speedup=round(repeated_s / ours_s, 2),
                       one_window_s=round(best["one_window"], 3),
                       windows_speedup=round(best["one_window"] / ours_s, 3))
        if args.skip_reference:
            results["speedup_vs_hf"] = None
        else:
            reference_s = best["hf"]
            results.update(hf_s=round(reference_s, 3), hf_tokens_per_s=round(tokens_generated / reference_s, 1),
                           speedup_vs_hf=round(reference_s / ours_s, 2))
        results["load_average"] = os.getloadavg()[0]

    for key, value in results.items():
        print(f"{key:>26}: {value}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
