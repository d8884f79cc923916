"""Does the demo SFT model see the emotion? Linear probes on its features, and an image-swap test.

    XDG_CACHE_HOME=... python benchmarks/demo_perception.py --workdir W [--train 2000 --test 500 --swap 64]

The demo SFT model (configs/sft.py, demo variant) learns the answer format but its emotion accuracy
stays at chance. Two measurements tell apart "the vision tower never learned the expression" from
"the tower carries it but the language model ignores it":

(a) Linear probes. For `--train` faces of the stage 2 ("rl") split and `--test` faces of the test
    split, three feature sets are extracted from the model in W (its last checkpoint):
      vision   the merged image features (`encode_images`, the rows that replace the image
               placeholders), mean-pooled over each image's tokens;
      prompt   the decoder's final hidden state at the last prompt position (where the first
               completion token is predicted);
    and the same two from a freshly initialised model of the same configuration (the control:
    what a random tower gives), plus 28 x 28 grey pixels (what a linear map of the image gives).
    A logistic-regression probe (optax Adam, full batch, L2 chosen on a validation fifth of the
    training faces) predicts the emotion (softmax over 8) and the AU set (one sigmoid per AU);
    reported: held-out emotion accuracy and AU micro-F1 (threshold 0.5), next to the majority
    class and the best constant AU set; and per feature set how much it varies between faces
    (principal components for 99% of the variance, spread around the mean / norm of the mean).
    Targets are the rendered truth (synthface meta_info), since the stage 2 split annotates some
    faces with only a label or only AUs.

(b) Image dependence of the greedy answer. The first `--swap` test prompts are decoded greedily
    as they are and again with the images rotated by one (prompt i gets face i + 1; the prompt
    text is the same). Reported: the share of answers (the emotion word) and of whole completions
    that change, and how often the swapped answer follows the new face's label.

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image

from facialr1_jax import models
from facialr1_jax.data import batching, datasets
from facialr1_jax.data.examples import EncodingConfig, PromptExample, encode_prompt_example
from facialr1_jax.data.pipeline import element_images, pad_id_of
from facialr1_jax.fea import answers
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.sampling import PromptBatch
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train.evaluation import GreedyEvaluator
from facialr1_jax.train.vision_warmup import micro_f1

PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1)  # candidates, chosen on the validation fifth
PROBE_STEPS = 400


@dataclasses.dataclass(frozen=True)
class Faces:
    """Encoded prompts of one split and their targets."""

    prompts: list[PromptExample]
    emotions: np.ndarray  # [N] index into EMOTIONS
    aus: np.ndarray  # [N, len(au_vocabulary)] 0/1
    pixels: np.ndarray  # [N, 784] 28 x 28 grey, in [0, 1]


def _rendered_truth(record) -> tuple[str, tuple[str, ...]]:
    """(emotion, AUs) the face was rendered with (synthface meta_info), else the record's annotation."""
    meta = record.meta_info or {}
    emotion = meta.get("emotion") or record.label
    if emotion not in EMOTIONS:
        raise ValueError(f"record {record.id}: no emotion among {EMOTIONS} (label {record.label!r}, meta {meta!r})")
    return emotion, tuple(meta.get("true_aus", record.aus))


def load_faces(config, split_name: str, count: int, tokenizer, encoding: EncodingConfig,
               au_vocabulary: list[str] | None) -> tuple[Faces, list[str]]:
    split = datasets.load_split(config, split_name)
    count = min(count, len(split))
    prompts, grey = [], []
    for index in range(count):
        element = split.source[index]
        images = element_images(element)
        prompts.append(encode_prompt_example(element["record"], tokenizer, encoding, images=images))
        image = images[0]
        image = Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else Image.fromarray(np.asarray(image))
        grey.append(np.asarray(image.convert("L").resize((28, 28), Image.BILINEAR), np.float32).reshape(-1) / 255.0)
    # The rendered truth: the stage 2 split annotates some faces with only a label or only AUs (as
    # FEA-20K does), but every synthetic face records the expression it was drawn with.
    truths = [_rendered_truth(p.record) for p in prompts]
    if au_vocabulary is None:
        au_vocabulary = sorted({au for _, face_aus in truths for au in face_aus}, key=lambda au: int(au[2:]))
    column = {au: i for i, au in enumerate(au_vocabulary)}
    aus = np.zeros((count, len(au_vocabulary)), np.float32)
    for row, (_, face_aus) in enumerate(truths):
        for au in face_aus:
            if au in column:
                aus[row, column[au]] = 1.0
    emotions = np.array([EMOTIONS.index(emotion) for emotion, _ in truths], np.int32)
    return Faces(prompts, emotions, aus, np.stack(grey)), au_vocabulary


# ------------------------------------------------------------------------------------------ features
def _feature_program(graphdef):
    @jax.jit
    def features(params, batch: PromptBatch):
        model = nnx.merge(graphdef, params)
        image_features = model.encode_images(batch.pixel_values, batch.plan)
        embeds = model.embed(batch.input_ids, image_features)
        hidden, _ = model.forward_embeds(embeds, batch.position_ids, batch.attention_mask, return_hidden=True)
        return image_features, hidden[:, -1]  # left padding: the last prompt token is the last column

    return features


def extract(model, prompts: list[PromptExample], *, pad_id: int, max_prompt_tokens: int, batch_size: int):
    """(vision [N, H] mean-pooled merged image features, prompt [N, H] last prompt hidden state)."""
    graphdef, params = nnx.split(model)
    program = _feature_program(graphdef)
    merge_unit = model.config.vision_config.merge_unit
    vision, last = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        collated = batching.collate_prompts(chunk, model.config, pad_id=pad_id, max_length=max_prompt_tokens,
                                            batch_size=batch_size)
        image_features, hidden = jax.device_get(program(params, PromptBatch.from_collated(collated)))
        # Feature rows follow the images in prompt order; each image gives prod(grid) / merge_unit rows.
        offset = 0
        rows = [int(e.image_grid_thw.prod(axis=1).sum()) // merge_unit for e in chunk]
        for count in rows:
            vision.append(image_features[offset:offset + count].mean(axis=0))
            offset += count
        last.append(hidden[: len(chunk)])
    return np.stack(vision).astype(np.float32), np.concatenate(last).astype(np.float32)


# ------------------------------------------------------------------------------------------ probes
def _standardise(train: np.ndarray, *others: np.ndarray):
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


@jax.jit
def _fit(x, y_emotion, y_aus, l2):
    """Full-batch Adam on the two linear heads; cross-entropy (softmax / sigmoid) + l2 * |W|^2."""
    dim = x.shape[1]
    params = {"emotion": (jnp.zeros((dim, len(EMOTIONS))), jnp.zeros(len(EMOTIONS))),
              "aus": (jnp.zeros((dim, y_aus.shape[1])), jnp.zeros(y_aus.shape[1]))}
    tx = optax.adam(1e-2)

    def loss(p):
        w, b = p["emotion"]
        emotion = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y_emotion).mean()
        v, c = p["aus"]
        aus = optax.sigmoid_binary_cross_entropy(x @ v + c, y_aus).mean(axis=0).sum()
        return emotion + aus + l2 * (jnp.sum(w * w) + jnp.sum(v * v))

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=PROBE_STEPS)
    return params


def _scores(params, x, emotions, aus) -> tuple[float, float]:
    w, b = params["emotion"]
    v, c = params["aus"]
    accuracy = float(np.mean(np.argmax(np.asarray(x @ w + b), axis=1) == emotions))
    return accuracy, micro_f1(np.asarray(x @ v + c) > 0.0, aus)


def probe(train_x, train_faces: Faces, test_x, test_faces: Faces) -> dict:
    """Held-out emotion accuracy and AU micro-F1 of the linear probe (L2 picked on a validation fifth)."""
    cut = len(train_x) * 4 // 5
    fit_x, val_x = _standardise(train_x[:cut], train_x[cut:])
    best = {}
    for l2 in PROBE_L2:
        params = _fit(fit_x, train_faces.emotions[:cut], train_faces.aus[:cut], l2)
        accuracy, f1 = _scores(params, val_x, train_faces.emotions[cut:], train_faces.aus[cut:])
        if accuracy > best.get("emotion", (-1.0,))[0]:
            best["emotion"] = (accuracy, l2)
        if f1 > best.get("aus", (-1.0,))[0]:
            best["aus"] = (f1, l2)
    all_x, held_x = _standardise(train_x, test_x)
    out = {}
    for target, (_, l2) in best.items():
        params = _fit(all_x, train_faces.emotions, train_faces.aus, l2)
        test_accuracy, test_f1 = _scores(params, held_x, test_faces.emotions, test_faces.aus)
        train_accuracy, train_f1 = _scores(params, all_x, train_faces.emotions, train_faces.aus)
        if target == "emotion":
            out.update(emotion_accuracy=round(test_accuracy, 4), emotion_train_accuracy=round(train_accuracy, 4),
                       emotion_l2=l2)
        else:
            out.update(au_micro_f1=round(test_f1, 4), au_train_micro_f1=round(train_f1, 4), au_l2=l2)
    return out


def feature_spread(features: np.ndarray) -> dict:
    """How much the features vary between faces: principal components holding 99% of the variance,
    and the typical distance of a face's features from the mean, relative to the mean's norm (a
    tower that maps every face to about the same vector has a small ratio)."""
    centred = features - features.mean(axis=0)
    variances = np.linalg.svd(centred, compute_uv=False) ** 2
    components = int(np.searchsorted(np.cumsum(variances) / variances.sum(), 0.99) + 1)
    ratio = float(np.linalg.norm(centred, axis=1).mean() / (np.linalg.norm(features.mean(axis=0)) + 1e-12))
    return {"components_99": components, "spread_over_mean": round(ratio, 4)}


def baselines(train: Faces, test: Faces) -> dict:
    majority = np.bincount(train.emotions, minlength=len(EMOTIONS)).argmax()
    prevalence = train.aus.mean(axis=0)
    # The best constant AU set for micro-F1 on the training faces, scored on the test faces.
    order = np.argsort(-prevalence)
    best_k = max(range(1, len(order) + 1),
                 key=lambda k: micro_f1(np.broadcast_to(np.isin(np.arange(len(order)), order[:k]), train.aus.shape),
                                        train.aus))
    constant = np.broadcast_to(np.isin(np.arange(len(order)), order[:best_k]), test.aus.shape)
    return {"majority_emotion": EMOTIONS[majority],
            "majority_accuracy": round(float(np.mean(test.emotions == majority)), 4),
            "constant_au_set": best_k, "constant_au_micro_f1": round(micro_f1(constant, test.aus), 4),
            "test_emotion_counts": {EMOTIONS[i]: int(n) for i, n in
                                    enumerate(np.bincount(test.emotions, minlength=len(EMOTIONS))) if n}}


# ------------------------------------------------------------------------------------------ image swap
def image_swap(model, tokenizer, encoding: EncodingConfig, faces: Faces, count: int, *, batch_size: int,
               max_new_tokens: int) -> dict:
    prompts = faces.prompts[:count]
    shapes = {tuple(p.image_grid_thw.reshape(-1)) for p in prompts}
    if len(shapes) != 1:
        raise ValueError(f"the image swap needs faces of one size; the test prompts have grids {sorted(shapes)}")
    rotated = [dataclasses.replace(p, pixel_values=prompts[(i + 1) % count].pixel_values,
                                   image_grid_thw=prompts[(i + 1) % count].image_grid_thw)
               for i, p in enumerate(prompts)]
    evaluator = GreedyEvaluator.create(tokenizer, encoding, model.config, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size)
    own = evaluator.generate_texts(model, prompts)
    swapped = evaluator.generate_texts(model, rotated)
    own_answer = [answers.eval_emotion(t) for t in own]
    swapped_answer = [answers.eval_emotion(t) for t in swapped]
    labels = [EMOTIONS[e] for e in faces.emotions[:count]]
    new_labels = labels[1:] + labels[:1]
    return {
        "prompts": count,
        "answer_changed": round(float(np.mean([a != b for a, b in zip(own_answer, swapped_answer)])), 4),
        "completion_changed": round(float(np.mean([a != b for a, b in zip(own, swapped)])), 4),
        "label_changed": round(float(np.mean([a != b for a, b in zip(labels, new_labels)])), 4),
        "own_accuracy": round(float(np.mean([a == b for a, b in zip(own_answer, labels)])), 4),
        "swapped_follows_new_face": round(float(np.mean([a == b for a, b in zip(swapped_answer, new_labels)])), 4),
        "distinct_completions": len(set(own)),
        "answer_counts": {a: own_answer.count(a) for a in sorted(set(own_answer))},
    }


# ------------------------------------------------------------------------------------------ main
def run(workdir: str, *, train: int, test: int, swap: int, batch_size: int, max_new_tokens: int, seed: int) -> dict:
    start = time.time()
    model, tokenizer, info = checkpoint_lib.load_model(workdir)
    config = ml_collections.ConfigDict(info["meta"]["config"])
    encoding = EncodingConfig.from_config(config)
    pad = pad_id_of(tokenizer)
    train_faces, au_vocabulary = load_faces(config, "rl", train, tokenizer, encoding, None)
    test_faces, _ = load_faces(config, "test", test, tokenizer, encoding, au_vocabulary)
    fresh = models.Qwen2_5_VL(model.config, rngs=nnx.Rngs(seed))
    result = {"workdir": workdir, "checkpoint": info["path"], "train_faces": len(train_faces.prompts),
              "test_faces": len(test_faces.prompts), "au_vocabulary": au_vocabulary,
              "sft_records": int(config.data.builtin_num_sft), **baselines(train_faces, test_faces)}
    probes = {}
    for name, which in (("sft", model), ("fresh", fresh)):
        extract_options = dict(pad_id=pad, max_prompt_tokens=encoding.max_prompt_tokens, batch_size=batch_size)
        train_vision, train_prompt = extract(which, train_faces.prompts, **extract_options)
        test_vision, test_prompt = extract(which, test_faces.prompts, **extract_options)
        probes[f"{name}_vision"] = {**probe(train_vision, train_faces, test_vision, test_faces),
                                    **feature_spread(train_vision)}
        probes[f"{name}_prompt"] = {**probe(train_prompt, train_faces, test_prompt, test_faces),
                                    **feature_spread(train_prompt)}
        print(name, json.dumps({k: v for k, v in probes.items() if k.startswith(name)}), flush=True)
    probes["pixels_28"] = probe(train_faces.pixels, train_faces, test_faces.pixels, test_faces)
    result["probes"] = probes
    print("probes", json.dumps(probes), flush=True)
    if swap > 1:
        result["image_swap"] = image_swap(model, tokenizer, encoding, test_faces, min(swap, len(test_faces.prompts)),
                                          batch_size=min(batch_size, swap), max_new_tokens=max_new_tokens)
    result["wall_seconds"] = round(time.time() - start, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="SFT workdir (or step folder) of the demo model")
    parser.add_argument("--train", type=int, default=2000, help="rl-split faces the probes are fitted on")
    parser.add_argument("--test", type=int, default=500, help="test-split faces the probes are scored on")
    parser.add_argument("--swap", type=int, default=64, help="test prompts in the image-swap test (0 = skip)")
    parser.add_argument("--batch-size", type=int, default=50, help="prompts per feature / generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="greedy completion cap in the swap test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised control model")
    args = parser.parse_args()
    result = run(args.workdir, train=args.train, test=args.test, swap=args.swap, batch_size=args.batch_size,
                 max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
