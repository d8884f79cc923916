"""GRPO step time: our jitted step against `trl`'s GRPOTrainer (PyTorch CPU) on the same weights.

    python benchmarks/grpo_vs_trl.py [--prompts 2] [--samples 8] [--new_tokens 64] [--beta 0.04]
                                     [--steps 3] [--warmup 1] [--image_size 224] [--quick] [--text_only] [--full_layout]

Setting (one GRPO step = rollout + rewards + advantages + reference log-probs + one update, mu = 1):
`--prompts` prompts, each a chat turn with one `--image_size` px image, G = `--samples` completions
each, exactly `--new_tokens` new tokens (no stop token on our side, `min_new_tokens` on trl's), KL to
the frozen initial policy with `--beta`, AdamW.

* model: the `small` preset with the bundled tokenizer's special-token ids (so the one tokenizer /
  processor serves both sides); ours is initialised, saved with `hf_io.save_pretrained` into a temp
  folder together with the tokenizer and `Qwen2VLImageProcessorPil`, and trl loads that folder (with
  beta > 0 trl reloads the reference model from the path).
* prompts: the same chat text and images on both sides; ours are the processor's own input_ids,
  pixel_values and image_grid_thw, so both models see identical inputs.
* rewards: ours, `rewards.make_reward_fn` (jitted, on token ids); trl's, the Python oracle
  `fea.answers.total_reward` on the decoded text (what a trl user would write).
* threads: torch.set_num_threads = the CPUs this process may use (what XLA sizes its pool by).

Each side runs `--warmup` untimed steps (compilation included on ours), then `--steps` timed steps;
the median step time counts. `speedup_vs_trl` = trl median / ours. trl is run with a callback that
times `on_step_begin` .. `on_step_end` (its rollout happens inside the step). The last line is one
JSON object with `speedup_vs_trl`; `vision` says whether the images went through both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from facialr1_jax.parallel import usable_cpus  # noqa: E402

EMOTION_LABELS = ("happiness", "sadness", "anger", "surprise")
PROMPT_TEXT = "Describe the facial action units you see, then name the emotion."


def benchmark_config(tokenizer):
    """The `small` preset, its special-token ids taken from `tokenizer` (ids stay inside its vocabulary)."""
    from facialr1_jax.data import tokenizer as bundled
    from facialr1_jax.models import get_preset

    special = bundled.special_token_ids(tokenizer)
    return get_preset("small", image_token_id=special.image_pad, vision_start_token_id=special.vision_start,
                      vision_end_token_id=special.vision_end,
                      text_config={"bos_token_id": special.im_start, "eos_token_id": special.eos,
                                   "pad_token_id": special.pad})


def synthetic_images(count: int, size: int, seed: int):
    """`count` RGB PIL images of `size` x `size` px (smooth noise, so patches differ)."""
    from PIL import Image

    rs = np.random.RandomState(seed)
    images = []
    for _ in range(count):
        coarse = rs.randint(0, 256, (8, 8, 3)).astype(np.uint8)
        images.append(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    return images


def make_processor(folder: str):
    """A Qwen2.5-VL processor from `folder` without a video processor (torchvision is not installed)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Skips the video-processor type check, which needs torchvision, when there is none."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                              chat_template=tokenizer.chat_template)


def conversation(with_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": PROMPT_TEXT}]
    return [{"role": "user", "content": content}]


# ------------------------------------------------------------------------------------ ours
class OurGRPOStep:
    """One on-policy GRPO step of `train.grpo_loop`, built from its parts on fixed prompts."""

    def __init__(self, model, tokenizer, prompts, labels, *, samples: int, new_tokens: int, beta: float,
                 learning_rate: float, seed: int, share_prompts: bool = True):
        import optax

        from facialr1_jax.data import batching
        from facialr1_jax.fea.emotions import EMOTIONS
        from facialr1_jax.parallel import TRAINING_RULES, make_mesh
        from facialr1_jax.rewards import encode_ground_truth, make_reward_fn
        from facialr1_jax.sampling import Engine
        from facialr1_jax.train import grpo_loop
        from facialr1_jax.train import state as state_lib
        from facialr1_jax.train import step as step_lib

        self.config = model.config
        self.prompts, self.samples, self.new_tokens, self.seed = prompts, samples, new_tokens, seed
        self.mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        self.pad = self.config.text_config.pad_token_id
        self.collated = batching.collate_prompts(prompts, self.config, pad_id=self.pad,
                                                 max_length=max(len(p.input_ids) for p in prompts))
        schedule = optax.constant_schedule(learning_rate)
        tx = optax.adamw(schedule)
        self.model_def, self.state, shardings = state_lib.create_train_state(model, tx, seed=seed, mesh=self.mesh)
        self.engine = Engine(self.model_def.graphdef, self.config, mesh=self.mesh)
        settings = dict(eps_low=0.2, eps_high=0.2, beta=beta, kl_estimator="k3", aggregation="seq_mean_token_mean",
                        ratio_level="token", max_length=new_tokens)
        self.train_step = step_lib.TrainStep(self.model_def, grpo_loop.make_grpo_loss(settings,
                                                                                      use_stored_old_log_probs=False),
                                             tx, schedule, shardings, self.mesh, rules=TRAINING_RULES)
        self.log_prob_fn = grpo_loop.make_log_prob_fn(self.model_def, shardings.params, self.mesh, new_tokens)
        self.reference_params = jax.tree.map(jnp.copy, self.state.params) if beta > 0 else None
        self.reward_fn = make_reward_fn(tokenizer, EMOTIONS)
        label_ids = np.array([EMOTIONS.index(label) for label in labels], np.int32)
        self.label_ids = jnp.repeat(jnp.asarray(label_ids), samples)
        self.au_truth = jnp.repeat(jnp.asarray(encode_ground_truth([("AU6", "AU12")] * len(labels))), samples, axis=0)
        self.step_lib = step_lib
        self.calls = 0
        self.share_prompts = share_prompts

    def __call__(self) -> dict:
        from facialr1_jax.train import grpo
        from facialr1_jax.train.grpo_batch import training_batch

        self.calls += 1
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), self.calls)
        out = self.engine.generate((self.state.params, self.model_def.frozen), self.collated,
                                   max_new_tokens=self.new_tokens, num_samples=self.samples, temperature=1.0,
                                   rng=key, stop_token_ids=())
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
        if not np.all(np.asarray(out.lengths) == self.new_tokens):
            raise RuntimeError(f"our engine generated lengths {np.asarray(out.lengths)}, expected {self.new_tokens}")
        rewards = self.reward_fn(out.tokens, out.mask > 0, self.label_ids, self.au_truth)
        advantages = np.asarray(grpo.group_advantages(rewards["total"], self.samples))
        batch = training_batch(self.collated, [p.pixel_values for p in self.prompts],
                               [p.image_grid_thw for p in self.prompts], tokens, mask, advantages,
                               num_generations=self.samples, num_micro_batches=1, model_config=self.config,
                               pad_id=self.pad, share_prompts=self.share_prompts)
        device_batch = self.step_lib.put_batch(batch, self.step_lib.batch_shardings(batch, self.mesh))
        if self.reference_params is not None:
            device_batch["ref_log_probs"] = self.log_prob_fn(self.reference_params, device_batch)
        self.state, metrics = self.train_step(self.state, device_batch)
        return {name: float(value) for name, value in jax.device_get(metrics).items()}


def our_prompt_examples(processor, images, with_image: bool):
    """`PromptExample`s holding exactly what the processor gives trl for the same prompts."""
    from facialr1_jax.data.examples import PromptExample

    text = processor.apply_chat_template(conversation(with_image), tokenize=False, add_generation_prompt=True)
    examples = []
    for index, image in enumerate(images):
        encoded = processor(text=[text], images=[image] if with_image else None, return_tensors="np")
        if with_image:
            pixels = np.asarray(encoded["pixel_values"], np.float32)
            grid = np.asarray(encoded["image_grid_thw"], np.int64).reshape(-1, 3)
        else:
            pixels, grid = np.zeros((0, 1176), np.float32), np.zeros((0, 3), np.int64)
        examples.append(PromptExample(id=f"p{index}", input_ids=np.asarray(encoded["input_ids"][0], np.int32),
                                      pixel_values=pixels, image_grid_thw=grid, record=None, instruction=PROMPT_TEXT))
    return examples


def time_ours(step, warmup: int, steps: int) -> tuple[list[float], float]:
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, first


# ------------------------------------------------------------------------------------ trl
def time_trl(folder: str, processor, images, labels, *, with_image: bool, samples: int, new_tokens: int,
             beta: float, learning_rate: float, warmup: int, steps: int, seed: int) -> list[float]:
    import datasets as hf_datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from facialr1_jax.fea.answers import total_reward

    def oracle_reward(completions, label, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [total_reward(text, gold, ("AU6", "AU12"))["total"] for text, gold in zip(texts, label)]

    rows = {"prompt": [conversation(with_image) for _ in images], "label": list(labels)}
    if with_image:
        rows["image"] = list(images)
    dataset = hf_datasets.Dataset.from_dict(rows)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        args = GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=len(images) * samples, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=samples, max_completion_length=new_tokens,
            generation_kwargs={"min_new_tokens": new_tokens}, temperature=1.0, top_k=0, top_p=1.0, beta=beta,
            learning_rate=learning_rate, lr_scheduler_type="constant", max_steps=warmup + steps, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=seed, dataloader_num_workers=0,
            shuffle_dataset=False, disable_tqdm=True,
            # trl turns activation checkpointing on by default; off, its step is faster (a fairer peer).
            gradient_checkpointing=False)
        trainer = GRPOTrainer(model=folder, reward_funcs=oracle_reward, args=args, train_dataset=dataset,
                              processing_class=processor, callbacks=[timer])
        trainer.train()
    return timer.times[warmup:]


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text_only", action="store_true", help="prompts without images on both sides")
    parser.add_argument("--full_layout", action="store_true",
                        help="also time our step with one full sequence per completion (grpo.share_prompts=False), "
                             "reported as full_layout_*")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 prompt, G = 4, 8 tokens, 112 px, 1 timed step")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.samples, args.new_tokens, args.image_size, args.steps = 1, 4, 8, 112, 1
    if args.samples < 2 or args.prompts < 1 or args.steps < 1:
        raise ValueError("--samples must be >= 2, --prompts and --steps >= 1")

    import torch

    from facialr1_jax.data.tokenizer import load_tokenizer
    from facialr1_jax.models import bound_frame_patches, init_model
    from facialr1_jax.models.hf_io import save_pretrained
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.set_num_threads(usable_cpus())
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer()
    config = benchmark_config(tokenizer)
    images = synthetic_images(args.prompts, args.image_size, args.seed)
    labels = [EMOTION_LABELS[i % len(EMOTION_LABELS)] for i in range(args.prompts)]
    results: dict = {"preset": "small", "prompts": args.prompts, "samples": args.samples,
                     "new_tokens": args.new_tokens, "beta": args.beta, "image_size": args.image_size,
                     "cpus": usable_cpus(), "torch_threads": torch.get_num_threads(),
                     "device": jax.devices()[0].device_kind}

    with tempfile.TemporaryDirectory() as folder:
        model = init_model(config, seed=args.seed)
        save_pretrained(model, folder)
        tokenizer.save_pretrained(folder)
        Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=args.image_size ** 2).save_pretrained(folder)
        processor = make_processor(folder)

        with_image = not args.text_only
        note = None
        trl_times = None
        try:
            trl_times = time_trl(folder, processor, images, labels, with_image=with_image, samples=args.samples,
                                 new_tokens=args.new_tokens, beta=args.beta, learning_rate=args.learning_rate,
                                 warmup=args.warmup, steps=args.steps, seed=args.seed)
        except Exception as error:  # noqa: BLE001 - the fallback below says what failed
            if not with_image:
                raise
            note = f"trl could not run the vision prompts ({type(error).__name__}: {error}); both sides text-only"
            print(f"NOTE: {note}", flush=True)
            with_image = False
            trl_times = time_trl(folder, processor, images, labels, with_image=False, samples=args.samples,
                                 new_tokens=args.new_tokens, beta=args.beta, learning_rate=args.learning_rate,
                                 warmup=args.warmup, steps=args.steps, seed=args.seed)

        # As the launcher does from data.max_pixels: frames are at most image_size^2 pixels, so the vision
        # tower's full-attention blocks attend frame by frame (facialr1_jax/models/qwen2_5_vl/vision.py).
        bound_frame_patches(model, args.image_size ** 2)
        prompts = our_prompt_examples(processor, images, with_image)
        results["prompt_tokens"] = [len(p.input_ids) for p in prompts]
        step = OurGRPOStep(model, tokenizer, prompts, labels, samples=args.samples, new_tokens=args.new_tokens,
                           beta=args.beta, learning_rate=args.learning_rate, seed=args.seed)
        our_times, first = time_ours(step, args.warmup, args.steps)
        if args.full_layout:
            full_step = OurGRPOStep(model, tokenizer, prompts, labels, samples=args.samples,
                                    new_tokens=args.new_tokens, beta=args.beta, learning_rate=args.learning_rate,
                                    seed=args.seed, share_prompts=False)
            full_times, _ = time_ours(full_step, args.warmup, args.steps)
            full_s = statistics.median(full_times)
            results.update(full_layout_step_s=round(full_s, 3),
                           full_layout_speedup_vs_trl=round(statistics.median(trl_times) / full_s, 2),
                           shared_over_full_layout=round(full_s / statistics.median(our_times), 2))

    ours_s, trl_s = statistics.median(our_times), statistics.median(trl_times)
    results.update(vision=with_image, ours_step_s=round(ours_s, 3), ours_first_steps_s=round(first, 2),
                   ours_step_times=[round(t, 3) for t in our_times], trl_step_s=round(trl_s, 3),
                   trl_step_times=[round(t, 3) for t in trl_times], speedup_vs_trl=round(trl_s / ours_s, 2),
                   load_average=os.getloadavg()[0])
    if note:
        results["note"] = note
    for key, value in results.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
