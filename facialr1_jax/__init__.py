"""facialr1_jax: Facial-R1 (AU-grounded facial emotion reasoning, SFT -> GRPO -> synthesis) in JAX.

Importing the package is cheap: JAX and the model are loaded only by the modules that need them.
"""

__version__ = "0.1.0"
