"""The functional train state: what a step reads and writes, and what a checkpoint holds.

An NNX model is split once (`nnx.split(model, nnx.Param, ...)`) into
  * `ModelDef`: the graph definition and the non-trainable variables (never updated by a step);
  * `TrainState.params`: the trainable `nnx.Param` state, updated by every step;
and the optimiser state, step counter and RNG key join the params in `TrainState`, a plain pytree.
Steps are `jax.jit` functions of `(TrainState, batch)` with explicit shardings and the state donated
(DESIGN.md, house style 1), so no NNX object graph is walked per call.

Shardings: parameters keep the sharding they were placed with (`facialr1_jax.parallel.shard_model`
or a sharded import); optimiser moments follow their parameter; counters, keys and any other
optimiser leaves are replicated on the mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@flax.struct.dataclass
class TrainState:
    """Everything a training step updates. A pytree: jit it, donate it, checkpoint it."""

    step: jax.Array  # int32 scalar: optimiser updates applied so far.
    params: Any  # nnx.State of the trainable parameters.
    opt_state: Any  # optax state of `params`.
    rng: jax.Array  # uint32[2] base key; each step derives its keys with fold_in(rng, step).


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static part of a split model: rebuild a module with `merge(params)`."""

    graphdef: Any
    frozen: Any  # nnx.State of the non-trainable variables (empty for Qwen2.5-VL).

    def merge(self, params: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.frozen)


def split_model(model: nnx.Module) -> tuple[ModelDef, Any]:
    """(ModelDef, trainable params) of `model`; the module itself is not modified."""
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    return ModelDef(graphdef, frozen), params


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _sharding_of(leaf: Any, mesh: Mesh) -> NamedSharding:
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.shape == mesh.shape:
        return sharding
    return replicated(mesh)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """The sharding of every parameter as placed now (replicated for arrays not on `mesh`)."""
    return jax.tree.map(lambda leaf: _sharding_of(leaf, mesh), params)


def train_state_shardings(
    abstract_state: TrainState, params_sharding: Any, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shardings for every leaf of a TrainState: moments like their parameter, the rest replicated."""
    opt_sharding = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_state.opt_state,
        params_sharding,
        transform_non_params=lambda _: replicated(mesh),
    )
    return TrainState(
        step=replicated(mesh), params=params_sharding, opt_state=opt_sharding, rng=replicated(mesh)
    )


def create_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh: Mesh,
) -> tuple[ModelDef, TrainState, TrainState]:
    """Splits `model` and builds its TrainState on `mesh`.

    Returns (model_def, state, state_shardings). The optimiser state is created by a jitted
    `tx.init` with explicit out-shardings, so large moments are born sharded, never gathered.
    """
    model_def, params = split_model(model)
    params_sharding = param_shardings(params, mesh)
    params = jax.device_put(params, params_sharding)

    def init(params, seed_array):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.PRNGKey(seed_array),
        )

    seed_array = jnp.asarray(seed, jnp.uint32)
    abstract = jax.eval_shape(init, params, seed_array)
    shardings = train_state_shardings(abstract, params_sharding, tx, mesh)
    state = jax.jit(init, out_shardings=shardings)(params, seed_array)
    return model_def, state, shardings


def abstract_train_state(state_or_abstract: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs (with shardings) of a TrainState: the restore target of a checkpoint."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        state_or_abstract,
        shardings,
    )


def count_params(params: Any) -> int:
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
