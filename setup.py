"""Packaging for facialr1_jax: Facial-R1 (AU-grounded facial emotion analysis) on JAX."""

from setuptools import find_packages, setup

# Exact pins: these are the versions measured to resolve and work together (see README).
RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "pillow==13.0.0",
    "numpy>=1.26,<3",
    "rouge-score==0.1.2",
    "tensorboardX==2.6.5",
    "matplotlib>=3.8,<4",
]

# The PyTorch reference (parity tests). torch is pinned to the CPU wheel on local disk; an
# unpinned torch would pull a multi-GB CUDA build. torchvision must NOT be added: it fails to
# import beside this torch.
TEST = [
    "pytest==9.2.0",
    "hypothesis>=6.100",
    "torch==2.13.0",
    # The quickstart notebook (notebooks/): generated from its jupytext source and executed by the tests.
    "jupytext==1.19.7",
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
]

BENCH = TEST + [
    "trl==1.16.0",
]

setup(
    name="facialr1_jax",
    version="0.1.0",
    description="Facial-R1 (AU-grounded facial emotion reasoning with GRPO) in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["facialr1_jax", "facialr1_jax.*"]),
    package_data={"facialr1_jax": ["data/tokenizer/*", "assets/demo-base/*"]},
    include_package_data=True,
    install_requires=RUNTIME,
    extras_require={"test": TEST, "bench": BENCH},
)
