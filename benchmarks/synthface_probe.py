"""Do the synthetic faces carry their labels? A small CNN probe trained on rendered pixels.

    python benchmarks/synthface_probe.py [--train 12000 --test 1000 --epochs 3 ...]

Issue 3 asks for evidence that the built-in data set is learnable from the images: a small probe
trained for under a minute on rendered faces reaches AU micro-F1 >= 0.8 and emotion accuracy
>= 0.8 on held-out renders. The probe:
  * data: faces planned like the demo set's stage 2 split (`demo.plan_split("rl", ...)`, the same
    label sampler, new people and poses per face) for training, and like its test split for
    evaluation (other people again), rendered at 112 px with noise, lighting and pose;
  * input: the 112 px RGB image as 56 x 56 x 12 (each 2 x 2 pixel block stacked into channels,
    no detail lost, a quarter of the positions), standardised per image;
  * model: four-layer strided CNN (3 x 3 convs, ReLU) + one hidden dense layer, two heads:
    22 sigmoid AU logits and 8 emotion logits (Flax NNX), AdamW with warm-up and cosine decay
    (optax), a fixed number of epochs;
  * metrics: AU micro-F1 over the rendered AUs (threshold 0 on the logits) and emotion accuracy,
    plus, for context, the best emotion accuracy reachable from the true AU sets alone on the
    same test faces (`expressions.au_set_ceiling`).
The last line printed is one JSON object with the metrics and the timings (wall and CPU seconds
of rendering and of training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import numpy as np

from facialr1_jax.data import demo, expressions, synthface
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.train.vision_warmup import micro_f1


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    train: int = 12000  # training faces
    test: int = 1000  # held-out faces
    epochs: int = 3
    batch: int = 64
    learning_rate: float = 3e-3
    width: int = 32  # channels of the first conv; the others are 2x and 3x
    seed: int = 0
    workers: int | None = None  # render processes (None: one per core, at most 4)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _targets(faces: list[demo.PlannedFace]) -> tuple[np.ndarray, np.ndarray]:
    aus = np.zeros((len(faces), len(synthface.RENDERED_AUS)), np.float32)
    emotions = np.zeros(len(faces), np.int32)
    column = {au: index for index, au in enumerate(synthface.RENDERED_AUS)}
    for row, face in enumerate(faces):
        for au in face.expression.aus:
            aus[row, column[au]] = 1.0
        emotions[row] = EMOTIONS.index(face.expression.emotion)
    return aus, emotions


def _space_to_depth(images: np.ndarray) -> np.ndarray:
    n, height, width, channels = images.shape
    blocks = images.reshape(n, height // 2, 2, width // 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, height // 2, width // 2, 4 * channels)


def run_probe(config: ProbeConfig = ProbeConfig()) -> dict:
    """Render, train, evaluate; returns the metrics and timings (see the module doc)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    wall, cpu = time.perf_counter(), _cpu_seconds()
    train_faces = demo.plan_split("rl", config.train, config.seed)
    test_faces = demo.plan_split("test", config.test, config.seed)
    train_images = _space_to_depth(demo.render_faces(train_faces, 112, workers=config.workers))
    test_images = _space_to_depth(demo.render_faces(test_faces, 112, workers=config.workers))
    train_aus, train_emotions = _targets(train_faces)
    test_aus, test_emotions = _targets(test_faces)
    render_wall, render_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu

    class Probe(nnx.Module):
        def __init__(self, width: int, rngs: nnx.Rngs):
            channels = [train_images.shape[-1], width, 2 * width, 3 * width]
            self.convs = nnx.List(
                [nnx.Conv(channels[i], channels[i + 1], (3, 3), strides=2, rngs=rngs) for i in range(3)]
            )
            side = -(-train_images.shape[1] // 8)
            self.hidden = nnx.Linear(side * side * channels[-1], 256, rngs=rngs)
            self.au_head = nnx.Linear(256, len(synthface.RENDERED_AUS), rngs=rngs)
            self.emotion_head = nnx.Linear(256, len(EMOTIONS), rngs=rngs)

        def __call__(self, x):
            for conv in self.convs:
                x = jax.nn.relu(conv(x))
            x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
            return self.au_head(x), self.emotion_head(x)

    def standardise(images):
        x = images.astype(jnp.float32) / 255.0
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return (x - mean) / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-3)

    model = Probe(config.width, nnx.Rngs(config.seed))
    steps_per_epoch = config.train // config.batch
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, 50, steps_per_epoch * config.epochs)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    au_weight = len(synthface.RENDERED_AUS) / 4  # AU loss summed over a few active AUs, like one CE

    @nnx.jit
    def train_step(model, optimizer, images, aus, emotions):
        def loss_fn(model):
            au_logits, emotion_logits = model(standardise(images))
            au_loss = optax.sigmoid_binary_cross_entropy(au_logits, aus).mean() * au_weight
            emotion_loss = optax.softmax_cross_entropy_with_integer_labels(emotion_logits, emotions).mean()
            return au_loss + emotion_loss

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, images):
        au_logits, emotion_logits = model(standardise(images))
        return au_logits > 0, emotion_logits.argmax(-1)

    wall, cpu = time.perf_counter(), _cpu_seconds()
    order_rng = np.random.default_rng(config.seed)
    loss = float("nan")
    for _ in range(config.epochs):
        order = order_rng.permutation(config.train)
        for step in range(steps_per_epoch):
            batch = order[step * config.batch : (step + 1) * config.batch]
            loss = train_step(model, optimizer, train_images[batch], train_aus[batch], train_emotions[batch])
    loss = float(loss)
    train_wall, train_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu

    predicted_aus, predicted_emotions = (np.asarray(v) for v in predict(model, test_images))
    ceiling = expressions.au_set_ceiling((f.expression.emotion, f.expression.aus) for f in test_faces)
    return {
        "au_micro_f1": round(micro_f1(predicted_aus, test_aus), 4),
        "emotion_accuracy": round(float(np.mean(predicted_emotions == test_emotions)), 4),
        "emotion_accuracy_from_true_au_sets": round(ceiling, 4),
        "per_au_f1": {
            au: round(micro_f1(predicted_aus[:, i], test_aus[:, i]), 3) for i, au in enumerate(synthface.RENDERED_AUS)
        },
        "final_train_loss": round(loss, 4),
        "train_seconds_wall": round(train_wall, 1),
        "train_seconds_cpu": round(train_cpu, 1),
        "render_seconds_wall": round(render_wall, 1),
        "render_seconds_cpu": round(render_cpu, 1),
        "config": dataclasses.asdict(config),
        "jax_backend": jax.default_backend(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ProbeConfig()
    for field in dataclasses.fields(ProbeConfig):
        kind = float if field.type in ("float", float) else int
        parser.add_argument(f"--{field.name}", type=kind, default=getattr(defaults, field.name))
    args = parser.parse_args()
    print(json.dumps(run_probe(ProbeConfig(**vars(args)))))


if __name__ == "__main__":
    main()
