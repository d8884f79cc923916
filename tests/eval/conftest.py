"""Fixtures shared by the evaluation tests."""

import importlib.util
import os

import pytest


def _helper():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_checkpoint.py")
    spec = importlib.util.spec_from_file_location("facialr1_eval_demo_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_demo_checkpoint


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory):
    """A training workdir with one checkpoint (step 5) of an untrained demo-preset model."""
    return _helper()(str(tmp_path_factory.mktemp("demo-workdir")))
