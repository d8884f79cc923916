"""Fixtures for the rollout-engine tests: the tiny preset model (random weights, seed 3)."""

from __future__ import annotations

import pytest

from facialr1_jax.models import get_preset, init_model

TINY = get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_model():
    return init_model(TINY, seed=3)
