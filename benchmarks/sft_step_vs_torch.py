"""SFT training throughput: our jitted step against the PyTorch reference, same model, batch and threads.

    python benchmarks/sft_step_vs_torch.py [--preset small] [--batch 8] [--seq 256] [--steps 3]
                                           [--xla_options auto|both]

Both sides train the same weights (ours exported with `save_pretrained`, loaded by `transformers`'
Qwen2_5_VLForConditionalGeneration) on the same batch: `--batch` sequences of `--seq` tokens, each
with one 112 x 112 image (64 patches, 16 image tokens), cross-entropy on the second half of every
sequence (the "reply"). One training step = forward + backward + global-norm clipping + AdamW:
ours is `facialr1_jax.train.step.TrainStep` (one compiled program, state donated); the reference is
the usual PyTorch loop (`model(..., labels=...)`, `loss.backward()`, `clip_grad_norm_`,
`torch.optim.AdamW.step()`). Compilation and two steps per side are warm-up; then the timed steps
alternate between the two sides (so both see the same machine load) and the medians are reported.

Before timing, the first-step losses of both sides are printed: they agree to about 1e-4, which
shows the two are computing the same thing. Throughput = trained sequence tokens (batch x seq,
images included) per second. Our step compiles with its tuned options (facialr1_jax/parallel/xla_options.py);
`--xla_options both` also times it with XLA's defaults, in the same alternation. The last line is one
JSON object with `speedup_vs_torch`.
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
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from facialr1_jax import models  # noqa: E402
from facialr1_jax.data import batching  # noqa: E402
from facialr1_jax.data.examples import TrainExample  # noqa: E402
from facialr1_jax.parallel import TRAINING_RULES, make_mesh, shard_model, usable_cpus  # noqa: E402
from facialr1_jax.train import optim, sft  # noqa: E402
from facialr1_jax.train import state as state_lib  # noqa: E402
from facialr1_jax.train import step as step_lib  # noqa: E402

IMAGE_GRID = (1, 8, 8)  # a 112 x 112 image: 8 x 8 patches of 14 px


def optimizer_config(lr: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(lr=lr, schedule="constant", warmup_steps=0, end_lr_fraction=0.0,
                                          b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))


def synthetic_examples(config: models.Qwen2_5_VLConfig, batch: int, seq: int, seed: int) -> list[TrainExample]:
    """`batch` sequences: text, <vision_start>, image placeholders, <vision_end>, text, reply."""
    rs = np.random.RandomState(seed)
    special = {config.image_token_id, config.vision_start_token_id, config.vision_end_token_id,
               config.video_token_id, config.vision_token_id}
    ordinary = np.array([t for t in range(min(config.text_config.vocab_size, 30000)) if t not in special])
    image_tokens = int(np.prod(IMAGE_GRID)) // config.vision_config.merge_unit
    examples = []
    for index in range(batch):
        head = rs.choice(ordinary, 8).tolist()
        body_length = seq - len(head) - image_tokens - 2
        ids = (head + [config.vision_start_token_id] + [config.image_token_id] * image_tokens
               + [config.vision_end_token_id] + rs.choice(ordinary, body_length).tolist())
        label = np.zeros(seq, np.float32)
        label[seq // 2:] = 1.0
        patches = rs.randn(int(np.prod(IMAGE_GRID)), config.vision_config.patch_dim).astype(np.float32)
        examples.append(TrainExample(id=str(index), input_ids=np.array(ids, np.int32), label_mask=label,
                                     pixel_values=patches, image_grid_thw=np.array([IMAGE_GRID]),
                                     prompt_length=seq // 2, truncated=False))
    return examples


class OurStep:
    """Our side: TrainStep (one compiled program, state donated) on the benchmark batch."""

    def __init__(self, model, config, examples, *, lr: float, total_steps: int, compiler_options="auto"):
        mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
        shard_model(model, mesh, TRAINING_RULES)
        tx, schedule = optim.make_optimizer(optimizer_config(lr), total_steps=total_steps)
        model_def, self.state, shardings = state_lib.create_train_state(model, tx, seed=0, mesh=mesh)
        self.train_step = step_lib.TrainStep(model_def, sft.sft_loss, tx, schedule, shardings, mesh,
                                             rules=TRAINING_RULES, compiler_options=compiler_options)
        collate = batching.SFTCollator(model_config=config, num_micro_batches=1,
                                       max_length=len(examples[0].input_ids), pad_id=0)
        arrays, _ = batching.split_info(collate(examples))
        self.batch = step_lib.put_batch(arrays, step_lib.batch_shardings(arrays, mesh))

    def __call__(self) -> float:
        self.state, metrics = self.train_step(self.state, self.batch)
        return float(metrics["loss"])  # waits for the step to finish


class TorchStep:
    """The reference: the usual PyTorch loop on the same weights and batch."""

    def __init__(self, hf_dir: str, config, examples, *, lr: float, threads: int):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32,
                                                                        attn_implementation="sdpa")
        self.model.train()
        ids = np.stack([e.input_ids for e in examples]).astype(np.int64)
        labels = np.where(np.stack([e.label_mask for e in examples]) > 0, ids, -100)
        self.inputs = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.ones_like(torch.tensor(ids)),
            "pixel_values": torch.tensor(np.concatenate([e.pixel_values for e in examples])),
            "image_grid_thw": torch.tensor(np.concatenate([e.image_grid_thw for e in examples])),
            "mm_token_type_ids": torch.tensor((ids == config.image_token_id).astype(np.int64)),
            "labels": torch.tensor(labels),
        }
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0)

    def __call__(self) -> float:
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def timed(step) -> tuple[float, float]:
    started = time.perf_counter()
    loss = step()
    return loss, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after warm-up)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=usable_cpus(),
                        help="torch intra-op threads (default: the CPUs this process may use, as XLA)")
    parser.add_argument("--xla_options", choices=("auto", "both"), default="auto",
                        help="auto: our step with its tuned compiler options (facialr1_jax/parallel/xla_options.py); "
                             "both: also time it with XLA's default options (reported as plain_xla_*)")
    args = parser.parse_args()

    config = models.get_preset(args.preset)
    model = models.Qwen2_5_VL(config, rngs=nnx.Rngs(0))
    # As the launcher does from data.max_pixels: the vision tower's full-attention blocks attend frame by frame.
    models.bound_frame_patches(model, int(np.prod(IMAGE_GRID)) * config.vision_config.patch_size ** 2)
    examples = synthetic_examples(config, args.batch, args.seq, seed=0)
    with tempfile.TemporaryDirectory() as hf_dir:
        models.save_pretrained(model, hf_dir)
        reference = TorchStep(hf_dir, config, examples, lr=args.lr, threads=args.threads)
    ours = OurStep(model, config, examples, lr=args.lr, total_steps=args.steps + 2)
    plain = (OurStep(model, config, examples, lr=args.lr, total_steps=args.steps + 2, compiler_options=None)
             if args.xla_options == "both" else None)

    jax_loss, compile_seconds = timed(ours)  # compiles
    torch_loss, _ = timed(reference)
    timed(ours)  # one more warm-up each: buffers settle after donation, allocator caches fill
    timed(reference)
    if plain is not None:
        plain_loss = timed(plain)[0]
        timed(plain)
    # Alternate the timed steps so that all sides see the same machine load (other processes may
    # come and go on a shared machine); report the median of each.
    jax_times, torch_times, plain_times = [], [], []
    for _ in range(args.steps):
        jax_times.append(timed(ours)[1])
        torch_times.append(timed(reference)[1])
        if plain is not None:
            plain_times.append(timed(plain)[1])
    jax_seconds, torch_seconds = float(np.median(jax_times)), float(np.median(torch_times))

    tokens = args.batch * args.seq
    result = {
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "jax_devices": [str(d) for d in jax.devices()[:1]],
        "first_step_loss_jax": round(jax_loss, 6),
        "first_step_loss_torch": round(torch_loss, 6),
        "jax_seconds_per_step": round(jax_seconds, 4),
        "torch_seconds_per_step": round(torch_seconds, 4),
        "jax_compile_seconds": round(compile_seconds, 1),
        "jax_tokens_per_s": round(tokens / jax_seconds, 1),
        "torch_tokens_per_s": round(tokens / torch_seconds, 1),
        "speedup_vs_torch": round(torch_seconds / jax_seconds, 3),
    }
    if plain is not None:
        plain_seconds = float(np.median(plain_times))
        result.update(plain_xla_first_step_loss=round(plain_loss, 6), plain_xla_seconds_per_step=round(plain_seconds, 4),
                      plain_xla_speedup_vs_torch=round(torch_seconds / plain_seconds, 3),
                      tuned_over_plain_xla=round(plain_seconds / jax_seconds, 3))
    print(f"first-step loss: ours {jax_loss:.6f}, torch {torch_loss:.6f} (same weights and batch)")
    print(f"ours:  {result['jax_seconds_per_step']:.3f} s/step, {result['jax_tokens_per_s']:.0f} tokens/s "
          f"(compile {compile_seconds:.1f} s)")
    print(f"torch: {result['torch_seconds_per_step']:.3f} s/step, {result['torch_tokens_per_s']:.0f} tokens/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
