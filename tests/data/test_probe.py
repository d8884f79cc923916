"""Evidence that the synthetic faces carry their labels: the CNN probe of benchmarks/."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe(load_benchmark):
    return load_benchmark("synthface_probe")


def test_micro_f1(probe):
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    assert probe.micro_f1(truth, truth) == 1.0
    predicted = np.array([[1, 1, 0], [0, 1, 0]])  # tp 2, fp 1, fn 1
    assert probe.micro_f1(predicted, truth) == pytest.approx(4 / 6)
    assert probe.micro_f1(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0


def test_probe_learns_far_above_chance_from_a_few_faces(probe):
    """A short run (about 30 CPU-seconds) already reads AUs and emotions from pixels: measured
    emotion accuracy 0.51 and AU micro-F1 0.55, against 0.16 for always answering the most
    frequent emotion and 0 for never predicting an AU."""
    result = probe.run_probe(probe.ProbeConfig(train=2048, test=300, epochs=4, workers=2))
    assert result["emotion_accuracy"] > 0.35, result
    assert result["au_micro_f1"] > 0.4, result


@pytest.mark.slow
def test_probe_reaches_the_issue_targets(probe):
    """Issue 3: AU micro-F1 >= 0.8 and emotion accuracy >= 0.8 on held-out renders, after under a
    minute of training (checked as < 120 CPU-seconds, i.e. under a minute on the 2 cores, so other
    jobs on a shared machine do not make it flaky)."""
    result = probe.run_probe(probe.ProbeConfig())
    assert result["au_micro_f1"] >= 0.8, result
    assert result["emotion_accuracy"] >= 0.8, result
    assert result["train_seconds_cpu"] < 120, result
