"""Logical axis names -> mesh axes, for parameters and activations.

Every parameter of the model carries logical axis names in its `out_sharding` metadata (e.g. an MLP
up-projection is `("embed", "mlp")`), and the forward pass marks activations with `constrain(x,
("batch", "length", "act_embed"))`. A rules table says which mesh axes each logical name is split
over. Two tables ship:

* `TRAINING_RULES`: FSDP over `fsdp` (parameters sharded on their embedding dimension and gathered
  per layer) plus tensor parallelism over `tensor` (heads, MLP width, vocabulary); the batch is split
  over `data` and `fsdp`.
* `SAMPLING_RULES`: parameters replicated over `data`/`fsdp` and split only over `tensor`, because a
  decode step touches every parameter for a handful of tokens, and re-gathering FSDP shards per step
  costs more than the memory saved. The KV cache is split over the batch and the key/value heads.

A mesh axis whose size does not divide the dimension it would split is dropped for that array
(the dimension stays replicated), so small models run on any mesh; `logical_to_spec` documents it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical names used by facialr1_jax.models (parameters first, then activations and the KV cache).
TRAINING_RULES: Rules = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("patch", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("qkv", None),
    ("vision_mlp", "tensor"),
    ("merger_in", "fsdp"),
    ("merger_hidden", "tensor"),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("vision_tokens", ("data", "fsdp")),
    ("act_vision_embed", None),
    ("act_vision_heads", "tensor"),
    ("act_vision_mlp", "tensor"),
    # KV cache
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
)

SAMPLING_RULES: Rules = tuple(
    (name, None) if name in ("embed", "vision_embed", "merger_in") else (name, axes)
    for name, axes in TRAINING_RULES
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "facialr1_jax_activation_sharding", default=None)


def _rule_lookup(rules: Rules) -> dict[str, MeshAxes]:
    table: dict[str, MeshAxes] = {}
    for name, axes in rules:
        table.setdefault(name, axes)  # first match wins, as in flax's rules tables
    return table


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for an array whose dimensions carry `logical_axes`.

    A logical name missing from `rules` is an error (a typo would otherwise silently replicate). A mesh
    axis is used at most once per array (later dimensions lose it). With `mesh` and `shape`, mesh axes
    that do not divide their dimension are dropped, last first.
    """
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match an array of shape {tuple(shape)}")
    table = _rule_lookup(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no entry in the sharding rules table")
        axes = table[name]
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        axes = tuple(axis for axis in axes if axis not in used)
        if mesh is not None:
            axes = tuple(axis for axis in axes if axis in mesh.shape)
            if shape is not None:
                while axes and shape[dim] % math.prod(mesh.shape[axis] for axis in axes):
                    axes = axes[:-1]
        used.update(axes)
        spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*spec)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this context, `constrain` places sharding constraints on activations (trace inside it)."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Marks activation `x` with logical axes; a no-op outside `activation_sharding`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(logical_axes, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axes a Variable was annotated with, or None when it has none."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes else None


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules) -> NamedSharding:
    axes = variable_logical_axes(variable)
    shape = variable.get_value().shape
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """A State of NamedShardings matching `state` (for jit in/out shardings and orbax restores)."""
    return jax.tree.map(lambda v: v.replace(variable_sharding(v, mesh, rules)), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Moves every Variable of `model` onto `mesh` with the sharding its logical axes map to (in place)."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable):
            node.set_value(jax.device_put(node.get_value(), variable_sharding(node, mesh, rules)))
    return model
