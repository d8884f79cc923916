# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Facial-R1 in JAX: quickstart
#
# This notebook runs the whole method on a CPU with the built-in data (synthetic faces drawn from
# FACS action units, so nothing is downloaded):
#
# 1. generate the built-in data set and look at a few faces;
# 2. stage 1, SFT: teach a small vision-language model the answer format
#    `<think>...AU-grounded reasoning...</think><answer>emotion</answer>`;
# 3. analyse a face with the Python API (`FacialR1.load(...).analyze(image)`);
# 4. stage 2, GRPO: improve it with verifiable rewards (format, emotion, AU F1);
# 5. evaluate on the held-out split with the paper's metrics and report.
#
# It is a [jupytext](https://jupytext.readthedocs.io) "percent" script: run it as
# `python docs/quickstart.py` from the repository root, or open it as a notebook.
# `QUICKSTART_SIZE` picks the scale: `short` (default: 150 SFT steps and 6 GRPO steps, about half
# an hour on two busy CPU cores; the model learns the answer format, not yet the emotions) or
# `smoke` (a couple of steps, what the test suite runs; the model stays untrained). The demo
# configs (`configs/sft.py`, `configs/grpo.py`) train for longer.

# %%
import json
import os
import sys
import tempfile

# Make `configs/` importable: it sits beside `docs/` in the repository.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(globals().get("__file__", os.path.join(os.getcwd(), "x")))))
if not os.path.isdir(os.path.join(REPO, "configs")):
    REPO = os.getcwd()
sys.path.insert(0, REPO)

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # as a script: write figures to files instead of opening windows
import matplotlib.pyplot as plt
from PIL import Image

SIZE = os.environ.get("QUICKSTART_SIZE", "short")
WORKDIR = os.environ.get("QUICKSTART_WORKDIR") or tempfile.mkdtemp(prefix="facialr1-quickstart-")
SETTINGS = {
    # Records per built-in split, SFT steps, GRPO steps (x prompts x samples), evaluated faces.
    "short": dict(num_sft=300, num_rl=400, num_test=64, sft_steps=150, grpo_steps=6, prompts=4, samples=4,
                  eval_examples=64, max_new_tokens=120, vision_warmup_steps=200),
    "smoke": dict(num_sft=8, num_rl=8, num_test=4, sft_steps=2, grpo_steps=1, prompts=2, samples=2,
                  eval_examples=4, max_new_tokens=8, vision_warmup_steps=2),
}[SIZE]
print(f"quickstart ({SIZE}) working in {WORKDIR}")


def show(figure, name):
    """Displays a figure in a notebook; saves it under WORKDIR when run as a script."""
    if "ipykernel" in sys.modules:
        plt.show()
    else:
        path = os.path.join(WORKDIR, name)
        figure.savefig(path, dpi=100)
        print("saved", path)
    plt.close(figure)


def configure(config):
    """The settings every stage of this notebook shares: the data set, its size, the run length."""
    config.data.builtin_dir = os.path.join(WORKDIR, "data")
    config.data.builtin_num_sft = SETTINGS["num_sft"]
    config.data.builtin_num_rl = SETTINGS["num_rl"]
    config.data.builtin_num_test = SETTINGS["num_test"]
    config.checkpoint.every_steps = 1000  # only the final checkpoint
    config.logging.tensorboard = False
    config.logging.progress_bar = False
    return config


# %% [markdown]
# ## 1. The built-in data
#
# Each record follows the FEA-20K schema: an image, the ground-truth AUs, an emotion label and, for
# the SFT and test splits, a reference answer (`description`).

# %%
from facialr1_jax.data import demo
from facialr1_jax.fea.records import read_jsonl

# One process renders the faces (a second or two): worker processes would re-run this script.
data = demo.ensure_demo(os.path.join(WORKDIR, "data"), num_sft=SETTINGS["num_sft"], num_rl=SETTINGS["num_rl"],
                        num_test=SETTINGS["num_test"], workers=1, progress=False)
test_records = read_jsonl(data.test).records
print(json.dumps(test_records[0].to_json(), indent=1)[:800])

figure, axes = plt.subplots(1, 4, figsize=(10, 3))
for axis, record in zip(axes, test_records):
    axis.imshow(Image.open(os.path.join(data.images, record.image)))
    axis.set_title(f"{record.label}\n{' '.join(record.aus[:4])}", fontsize=8)
    axis.axis("off")
show(figure, "faces.png")

# %% [markdown]
# ## 2. Stage 1: supervised fine-tuning
#
# A fresh demo-size Qwen2.5-VL (a few million parameters) learns the answer format from the SFT
# split. `run_stage` is what `python launch/train.py --config=configs/sft.py` calls.

# %%
from configs import sft as sft_configs
from facialr1_jax import stages

sft_config = configure(sft_configs.get_config("demo"))
sft_config.sft.num_steps = SETTINGS["sft_steps"]
# The from-scratch demo model first learns to see (a supervised vision warm-up on the training faces).
sft_config.sft.vision_warmup_steps = SETTINGS["vision_warmup_steps"]
sft_config.sft.vision_warmup_batch_size = min(128, SETTINGS["num_sft"] + SETTINGS["num_rl"])
sft_config.optimizer.warmup_steps = min(20, SETTINGS["sft_steps"] // 5)
sft_config.sft.eval_num_examples = SETTINGS["eval_examples"]
sft_config.sft.final_eval_num_examples = SETTINGS["eval_examples"]
sft_config.sft.eval_max_new_tokens = SETTINGS["max_new_tokens"]
sft_config.sft.eval_batch_size = 8  # small batches keep the memory of a laptop run modest
sft_dir = os.path.join(WORKDIR, "sft")
sft_result = stages.run_stage(sft_config, sft_dir)
print({key: sft_result[key] for key in ("status", "step") if key in sft_result})

# %% [markdown]
# ## 3. Analyse a face
#
# `FacialR1.load` takes a training workdir (its latest checkpoint), one checkpoint step folder or a
# Hugging Face folder; `analyze` takes a path, a PIL image or a numpy array.

# %%
from facialr1_jax import FacialR1

analyser = FacialR1.load(sft_dir, max_new_tokens=SETTINGS["max_new_tokens"])
face_path = os.path.join(data.images, test_records[0].image)
analysis = analyser.analyze(face_path)
print(json.dumps({k: analysis[k] for k in ("emotion", "aus", "reasoning")}, indent=1))
print("ground truth:", test_records[0].label, list(test_records[0].aus))

figure, axis = plt.subplots(figsize=(3, 3))
axis.imshow(Image.open(face_path))
axis.set_title(f"predicted: {analysis['emotion']}\ntrue: {test_records[0].label}", fontsize=9)
axis.axis("off")
show(figure, "analysis.png")

# %% [markdown]
# ## 4. Stage 2: GRPO
#
# Starting from the SFT checkpoint, the policy samples several answers per face and is pushed
# towards those with higher verifiable reward (format + emotion accuracy + AU F1). The run writes a
# before/after table on the held-out split. A handful of steps only shows the loop at work: the
# table can move either way; `configs/grpo.py` runs 100 steps of 8 prompts x 8 samples.

# %%
from configs import grpo as grpo_configs

grpo_config = configure(grpo_configs.get_config("demo"))
grpo_config.grpo.init_from = sft_dir
grpo_config.grpo.num_steps = SETTINGS["grpo_steps"]
grpo_config.grpo.prompts_per_step = SETTINGS["prompts"]
grpo_config.grpo.num_generations = SETTINGS["samples"]
grpo_config.grpo.max_new_tokens = SETTINGS["max_new_tokens"]
grpo_config.grpo.eval_num_examples = SETTINGS["eval_examples"]
grpo_config.grpo.eval_batch_size = 8
grpo_config.optimizer.warmup_steps = 0
grpo_dir = os.path.join(WORKDIR, "grpo")
grpo_result = stages.run_stage(grpo_config, grpo_dir)  # prints the before/after table (also in grpo_report.md)

# %% [markdown]
# ## 5. Evaluate
#
# Greedy decoding on the held-out split, scored as in the paper (docs/METHOD.md section 9): emotion
# accuracy with a confusion matrix, AU F1 (macro and micro), the format-valid rate and ROUGE-L
# against the reference answers. The console table sets the paper's Facial-R1 numbers beside ours
# (they are for the real benchmarks, so they frame the scale rather than compare like with like).

# %%
from configs import eval as eval_configs

eval_config = configure(eval_configs.get_config("demo"))
eval_config.eval.checkpoint = grpo_dir
eval_config.eval.max_new_tokens = SETTINGS["max_new_tokens"]
eval_config.eval.batch_size = 8
eval_config.benchmarks.synthface.max_examples = SETTINGS["eval_examples"]
eval_dir = os.path.join(WORKDIR, "eval")
metrics = stages.run_stage(eval_config, eval_dir)["synthface"]
print({key: metrics[key] for key in ("num_examples", "emotion_accuracy", "au_f1_macro", "au_f1_micro",
                                      "format_valid", "rouge_l")})

figure, axis = plt.subplots(figsize=(6, 5))
axis.imshow(Image.open(os.path.join(eval_dir, "confusion-synthface.png")))
axis.axis("off")
show(figure, "confusion.png")

# %% [markdown]
# Next steps: `python launch/train.py --config=configs/pipeline.py` runs SFT -> GRPO -> data
# synthesis rounds on the built-in data; `configs/*.py:qwen2_5_vl_7b` are the paper's recipes for a
# real Qwen2.5-VL-7B checkpoint and the FEA-20K data; `python launch/infer.py --checkpoint=DIR
# --image=face.jpg` analyses your own photographs.
