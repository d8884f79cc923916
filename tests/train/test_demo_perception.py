"""The linear probe and feature-spread measures of benchmarks/demo_perception.py on planted features."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def perception(load_benchmark):
    return load_benchmark("demo_perception")


def _faces(perception, rng, count, num_aus=6):
    emotions = rng.integers(0, 8, count).astype(np.int32)
    aus = (rng.random((count, num_aus)) < 0.3).astype(np.float32)
    return perception.Faces(prompts=[], emotions=emotions, aus=aus, pixels=np.zeros((count, 1), np.float32))


def _planted(faces, rng, noise):
    """32-dim features: a one-hot of the emotion and the AU bits in separate coordinates, plus noise."""
    count = len(faces.emotions)
    features = rng.standard_normal((count, 32)).astype(np.float32) * noise
    features[np.arange(count), faces.emotions] += 1.0
    features[:, 8:8 + faces.aus.shape[1]] += faces.aus
    return features


def test_probe_reads_planted_labels_and_only_chance_from_noise(perception):
    rng = np.random.default_rng(0)
    train, test = _faces(perception, rng, 400), _faces(perception, rng, 200)
    planted = perception.probe(_planted(train, rng, 0.2), train, _planted(test, rng, 0.2), test)
    assert planted["emotion_accuracy"] > 0.9 and planted["au_micro_f1"] > 0.9, planted
    noise = perception.probe(rng.standard_normal((400, 32)), train, rng.standard_normal((200, 32)), test)
    assert noise["emotion_accuracy"] < 0.25, noise  # chance is 1/8; 200 faces give a std of 0.023


def test_micro_f1_and_feature_spread(perception):
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    assert perception.micro_f1(np.array([[1, 1, 0], [0, 1, 0]]), truth) == pytest.approx(4 / 6)
    rng = np.random.default_rng(1)
    collapsed = np.ones((100, 16)) * 5.0 + 0.01 * rng.standard_normal((100, 16))
    varied = rng.standard_normal((100, 16)) @ np.diag([1.0] * 4 + [0.0] * 12)
    assert perception.feature_spread(collapsed)["spread_over_mean"] < 0.01
    assert perception.feature_spread(varied)["components_99"] == 4
