"""Completions per second: the jitted rewards on token ids vs the Python regex rewards on text.

    python benchmarks/rewards_vs_python.py [--batch=1024] [--tokens=128] [--repeats=7]

The same GRPO-like batch is scored both ways with the bundled tokenizer:
  * Python (what every peer does): `tokenizer.batch_decode` of each completion's kept tokens
    (special tokens skipped), then `fea.answers.total_reward` per text (format, accuracy, AU);
  * ours: `make_reward_fn(...)` on the [batch, tokens] ids and completion mask already on the
    device, as the GRPO step has them after sampling.
Completions are answers written by `data.reasoning.write_description` for random labels, then
perturbed the way sampled completions go wrong (another emotion, dropped or damaged tags, AUs
lost or added, text after the answer, cut at the token limit), followed by <|im_end|> and padding.
Compilation is excluded; both sides are timed alternately (the machine may be shared) and the
medians are reported, with process CPU time too: XLA may spread work over the cores, Python uses
one, so the CPU-time ratio compares the work done.
The scores of both sides are checked to agree before timing. The last line printed is one JSON
object with `speedup_vs_python` = Python seconds / our seconds (wall clock).
"""

import json
import os
import statistics
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 1024, "Completions per reward call.")
_TOKENS = flags.DEFINE_integer("tokens", 128, "Completion length in tokens (max_new_tokens), padded.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed runs per side (the median is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the completions.")

PROMPT_AUS = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU15", "AU17", "AU20",
              "AU23", "AU24", "AU25", "AU26")


def _completion(rng, emotions, write_description):
    """(text, label, ground-truth AUs) for one sampled-like completion."""
    emotion = str(rng.choice(emotions))
    aus = sorted(rng.choice(PROMPT_AUS, size=int(rng.integers(1, 5)), replace=False).tolist(), key=lambda a: int(a[2:]))
    text = write_description(emotion, aus, rng)
    label = emotion
    r = rng.random()
    if r < 0.25:
        label = str(rng.choice([e for e in emotions if e != emotion]))  # wrong answer
    elif r < 0.35:
        text = text.replace("</answer>", "")  # unclosed answer
    elif r < 0.45:
        text = text.replace(f"({aus[0]})", "")  # an AU not named
    elif r < 0.55:
        text = text.replace("</think>", " (AU12) (AU01)</think>")  # extra and non-canonical AUs
    elif r < 0.6:
        text = text + " I hope this helps."  # text after the answer
    elif r < 0.65:
        text = text.replace("<think>", "<THINK>").replace(f"<answer>{emotion}", f"<answer>{emotion.title()}.")
    return text, (None if rng.random() < 0.05 else label), aus


def main(argv):
    del argv
    import jax
    import numpy as np

    from facialr1_jax.data.reasoning import write_description
    from facialr1_jax.data.tokenizer import load_tokenizer, special_token_ids
    from facialr1_jax.fea import answers as oracle
    from facialr1_jax.fea.emotions import EMOTIONS
    from facialr1_jax.rewards import encode_ground_truth, make_reward_fn

    batch, width = _BATCH.value, _TOKENS.value
    tokenizer = load_tokenizer()
    special = special_token_ids(tokenizer)
    rng = np.random.default_rng(_SEED.value)
    rows = [_completion(rng, EMOTIONS, write_description) for _ in range(batch)]
    ids = np.full((batch, width), special.pad, np.int32)
    mask = np.zeros((batch, width), bool)
    kept = []
    for row, (text, _, _) in enumerate(rows):
        sequence = (tokenizer.encode(text, add_special_tokens=False) + [special.eos])[:width]
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
        kept.append(sequence)
    labels = [label for _, label, _ in rows]
    aus = [truth for _, _, truth in rows]

    build_start = time.perf_counter()
    reward_fn = make_reward_fn(tokenizer, EMOTIONS)
    build_seconds = time.perf_counter() - build_start
    device_args = jax.device_put(
        (ids, mask, np.array([reward_fn.label_id(label) for label in labels], np.int32), encode_ground_truth(aus))
    )

    def ours():
        return jax.block_until_ready(reward_fn(*device_args))

    def python():
        texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
        return [oracle.total_reward(text, label, truth) for text, label, truth in zip(texts, labels, aus)]

    compile_start = time.perf_counter()
    jax_scores = ours()
    compile_seconds = time.perf_counter() - compile_start
    python_scores = python()
    for name in ("format", "accuracy", "au", "total"):
        expected = np.array([scores[name] for scores in python_scores])
        if not np.allclose(np.asarray(jax_scores[name]), expected, atol=1e-5):
            raise SystemExit(f"the jitted {name} reward disagrees with the Python oracle on this batch")

    timings = {"ours": ([], []), "python": ([], [])}
    for _ in range(_REPEATS.value):
        for name, fn in (("python", python), ("ours", ours)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            timings[name][0].append(time.perf_counter() - wall)
            timings[name][1].append(time.process_time() - cpu)
    wall = {name: statistics.median(t[0]) for name, t in timings.items()}
    cpu = {name: statistics.median(t[1]) for name, t in timings.items()}
    mean_tokens = float(mask.sum(axis=1).mean())
    print(f"batch {batch} completions x {width} tokens (mean {mean_tokens:.1f} kept), {jax.devices()[0].platform}, "
          f"tables built in {build_seconds:.1f} s, first call (compile) {compile_seconds:.1f} s")
    print(f"{'':8s} {'wall s':>9s} {'compl/s':>10s} {'cpu s':>9s} {'compl/cpu-s':>12s}")
    for name in ("python", "ours"):
        print(f"{name:8s} {wall[name]:9.4f} {batch / wall[name]:10.0f} {cpu[name]:9.4f} {batch / cpu[name]:12.0f}")
    result = {
        "speedup_vs_python": round(wall["python"] / wall["ours"], 2),
        "cpu_time_speedup_vs_python": round(cpu["python"] / cpu["ours"], 2),
        "ours_completions_per_s": round(batch / wall["ours"]),
        "python_completions_per_s": round(batch / wall["python"]),
        "batch": batch,
        "tokens": width,
        "mean_kept_tokens": round(mean_tokens, 1),
        "platform": jax.devices()[0].platform,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
