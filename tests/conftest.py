"""Test-wide setup.

Eight fake CPU devices let sharding tests build real meshes on one machine; the flag must be set
before JAX starts its backend, so it lives here rather than in individual tests.
"""

import importlib.util
import os
import sys

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
# Never reach for a hub: every model, tokenizer and data set in the tests is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is scripts, not a package)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """Loads a script of benchmarks/ by name, e.g. `load_benchmark("synthface_probe")`."""
    return _load_benchmark


@pytest.fixture(scope="session")
def small_demo_sft_config(tmp_path_factory):
    """Builds configs/sft.py's demo config over a fresh built-in data set of (sft, rl, test) records."""

    def build(num_sft: int, num_rl: int, num_test: int):
        import configs.sft

        config = configs.sft.get_config()
        config.data.builtin_dir = str(tmp_path_factory.mktemp("demo"))
        config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = num_sft, num_rl, num_test
        return config

    return build
