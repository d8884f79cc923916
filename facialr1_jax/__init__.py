"""facialr1_jax: Facial-R1 (AU-grounded facial emotion reasoning, SFT -> GRPO -> synthesis) in JAX.

Importing the package is cheap: JAX and the model are loaded only by the modules that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from facialr1_jax import FacialR1` works without making `import facialr1_jax` load JAX.
    if name == "FacialR1":
        from facialr1_jax.api import FacialR1

        return FacialR1
    raise AttributeError(f"module 'facialr1_jax' has no attribute {name!r}")
