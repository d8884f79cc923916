"""Times our jitted Qwen2.5-VL forward against the PyTorch reference on this CPU.

    python benchmarks/forward_vs_hf.py [--preset=small] [--batch=4] [--image_size=224] [--repeats=5]

Both sides get the same weights (a seeded random PyTorch model saved locally and loaded by
`from_pretrained`), the same left-padded batch of prompts with one image each (pixel values from
transformers' Qwen2VLImageProcessorPil) and the same number of CPU threads. Ours is the functional
`jax.jit` over `nnx.split` state that training uses, with host-side planning done once outside the timed
region (as in a data pipeline). Warm-up runs (compilation) are excluded; the median of --repeats timed
runs is reported. The last line printed is one JSON object with `speedup_vs_hf` = reference time / our time.
"""

import json
import os
import statistics
import sys
import tempfile
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "small", "Model preset (facialr1_jax.models.presets).")
_BATCH = flags.DEFINE_integer("batch", 4, "Prompts per batch.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Side of each (square) input image in pixels.")
_TEXT_TOKENS = flags.DEFINE_integer("text_tokens", 48, "Text tokens around the image in the longest prompt.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per side (the median is reported).")
_THREADS = flags.DEFINE_integer("threads", 0, "CPU threads for both sides (0 = all cores).")


def _configure_threads(threads: int) -> None:
    # XLA's CPU client reads its thread count when the backend starts, so this precedes any JAX work.
    flag = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _prompts(config, image_tokens: int, batch: int, text_tokens: int, rng):
    """Left-padded ids/mask: each row = text, <vision_start>, image tokens, <vision_end>, text."""
    import numpy as np

    rows = []
    for i in range(batch):
        text = max(2, text_tokens - 5 * i)  # ragged lengths so rows really are padded
        before = rng.integers(100, 20000, size=text // 2).tolist()
        after = rng.integers(100, 20000, size=text - text // 2).tolist()
        rows.append(before + [config.vision_start_token_id] + [config.image_token_id] * image_tokens
                    + [config.vision_end_token_id] + after)
    length = max(map(len, rows))
    ids = np.full((batch, length), config.text_config.pad_token_id or 0, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return ids, mask


def _interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of each callable, alternating them so load changes on a shared machine hit both."""
    times = ([], [])
    for _ in range(repeats):
        for fn, bucket in zip((first, second), times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv):
    del argv
    threads = _THREADS.value or os.cpu_count()
    _configure_threads(threads)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from PIL import Image
    from transformers import Qwen2_5_VLConfig as HFConfig
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from facialr1_jax.models import from_pretrained, get_preset, multimodal_position_ids, vision_plan

    torch.set_num_threads(threads)
    config = get_preset(_PRESET.value)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    reference = Qwen2_5_VLForConditionalGeneration(HFConfig(**config.to_hf_dict())).eval()

    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        ours = from_pretrained(directory)

    size = _IMAGE_SIZE.value
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(_BATCH.value)]
    processed = Qwen2VLImageProcessorPil()(images=images, return_tensors="np")
    pixel_values, grid = processed["pixel_values"].astype(np.float32), processed["image_grid_thw"]
    image_tokens = int(grid[0].prod() // config.vision_config.merge_unit)
    ids, mask = _prompts(config, image_tokens, _BATCH.value, _TEXT_TOKENS.value, rng)

    # Ours: host planning once (the data pipeline's job), then the compiled forward.
    positions, _ = multimodal_position_ids(ids, grid, mask, config)
    plan = jax.tree.map(jnp.asarray, vision_plan(grid, config.vision_config))
    graphdef, state = nnx.split(ours)

    @jax.jit
    def forward(state, ids, positions, mask, pixels, plan):
        return nnx.merge(graphdef, state).forward(ids, positions, mask, pixels, plan)[0]

    args = (state, jnp.asarray(ids, jnp.int32), jnp.asarray(positions), jnp.asarray(mask),
            jnp.asarray(pixel_values), plan)
    compile_start = time.perf_counter()
    our_logits = np.asarray(forward(*args).block_until_ready())
    compile_seconds = time.perf_counter() - compile_start
    forward(*args).block_until_ready()

    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  pixel_values=torch.tensor(pixel_values), image_grid_thw=torch.tensor(grid),
                  mm_token_type_ids=torch.tensor((ids == config.image_token_id).astype(np.int64)))
    with torch.inference_mode():
        reference_logits = reference(**inputs).logits.numpy()  # warm-up
        ours_seconds, reference_seconds = _interleaved_medians(
            lambda: forward(*args).block_until_ready(), lambda: reference(**inputs), _REPEATS.value)

    real = mask.astype(bool)
    max_diff = float(np.max(np.abs(our_logits[real] - reference_logits[real])))
    result = {
        "preset": _PRESET.value,
        "device": jax.devices()[0].device_kind,
        "threads": threads,
        "batch": _BATCH.value,
        "seq_len": int(ids.shape[1]),
        "image_tokens_per_prompt": image_tokens,
        "patches": int(pixel_values.shape[0]),
        "ours_ms": round(ours_seconds * 1e3, 2),
        "hf_ms": round(reference_seconds * 1e3, 2),
        "ours_compile_s": round(compile_seconds, 2),
        "max_abs_logit_diff": max_diff,
        "speedup_vs_hf": round(reference_seconds / ours_seconds, 3),
    }
    print(f"ours {result['ours_ms']} ms, transformers {result['hf_ms']} ms (median of {_REPEATS.value}); "
          f"logits agree to {max_diff:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
