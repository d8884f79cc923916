"""Jitted train and eval steps with gradient accumulation, shared by SFT and GRPO.

A step consumes one optimiser batch laid out as micro-batches: every array leaf of the batch dict
has a leading axis of length `num_micro_batches`. Leaves are split by example along axis 1 over
the mesh's batch axes (`data`, `fsdp`), except leaves under the key `"vision"`, which hold the
patches of all images of a micro-batch packed together (not indexed by example) and are therefore
replicated. `facialr1_jax.data.batching` builds batches in this layout.

A loss function has the signature

    loss_fn(model: nnx.Module, micro_batch: dict, rng: jax.Array) -> (loss_sum, denominator, extras)

with `extras` a dict of further SUMS (e.g. correct tokens, KL sum). The step scans the micro-batches
accumulating the gradient of `loss_sum`, the sums and the denominators, then divides the summed
gradient by the GLOBAL denominator once: 4 micro-batches of 2 give the gradient of 1 batch of 8.
Gradients are accumulated in float32 whatever the parameter dtype.

With `rules` (a logical-axis table such as `parallel.TRAINING_RULES`), the model's activation
constraints are active while the step is traced. The jitted functions are functional (`jax.jit` over `nnx.split` state) with explicit in/out
shardings and the state donated; they are compiled once per batch structure and shape (the batch
builder pads to a few buckets, so a run compiles a handful of times at most).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facialr1_jax.parallel import xla_options
from facialr1_jax.parallel.rules import Rules, activation_sharding
from facialr1_jax.train.state import ModelDef, TrainState

LossOutput = tuple[jax.Array, jax.Array, dict[str, jax.Array]]
LossFn = Callable[[Any, dict, jax.Array], LossOutput]

# Batch-dict keys whose leaves are packed over a micro-batch instead of indexed by example.
PACKED_KEYS = ("vision",)
BATCH_MESH_AXES = ("data", "fsdp")


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    """NamedShardings for a micro-batched batch dict (see the module docstring for the layout).

    Per-example leaves are split along axis 1 over the mesh's batch axes when that axis divides
    evenly; a remainder would need padding rows, so such leaves stay replicated instead.
    """
    axes = tuple(axis for axis in BATCH_MESH_AXES if axis in mesh.shape and mesh.shape[axis] > 1)
    split = 1
    for axis in axes:
        split *= mesh.shape[axis]

    def per_example(leaf):
        if axes and leaf.ndim >= 2 and leaf.shape[1] % split == 0:
            return NamedSharding(mesh, PartitionSpec(None, axes if len(axes) > 1 else axes[0]))
        return NamedSharding(mesh, PartitionSpec())

    out = {}
    for key, value in batch.items():
        if key in PACKED_KEYS:
            out[key] = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), value)
        else:
            out[key] = jax.tree.map(per_example, value)
    return out


def put_batch(batch: dict, shardings: dict) -> dict:
    """Host numpy GLOBAL batch -> global jax arrays with `shardings`.

    Every process passes the same whole batch (the data pipeline runs with the same seed on every
    host). `make_array_from_process_local_data` is told the global shape, so each process copies
    only the rows its own devices hold; without it JAX would read each host's copy as that host's
    share and build a batch `process_count` times larger. On one host this is a sharded device_put.
    """
    return jax.tree.map(
        lambda leaf, sharding: jax.make_array_from_process_local_data(sharding, leaf, leaf.shape),
        batch, shardings,
    )


def _is_host_tree(tree: Any) -> bool:
    """True when no leaf is a jax.Array yet (a host batch that still has to be placed)."""
    return not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tree))


def without_remat(model: nnx.Module) -> nnx.Module:
    """A view of `model` (same parameter arrays, new module objects) with rematerialisation off.

    Forward-only programs (held-out loss, GRPO log-probs, sampling) have no backward pass whose
    memory remat would save, and flax's `nnx.remat` cannot run a layer whose parameters were merged
    outside the loop that calls it (the decode `while_loop`, a `lax.map` / `lax.scan` over
    micro-batches closing over the parameters: "Cannot mutate Param from a different trace level").
    Every submodule with a boolean `remat` attribute (the decoder stack, the vision tower) is turned
    off; the module passed in is not modified.
    """
    graphdef, state = nnx.split(model)
    # New Variable objects around the same arrays: placing or updating the view leaves `model` alone.
    view = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))
    for _, module in nnx.iter_modules(view):
        if isinstance(getattr(module, "remat", None), bool):
            module.remat = False
    return view


def forward_only(model_def: ModelDef, params: Any) -> ModelDef:
    """`model_def` rebuilt with rematerialisation off (see `without_remat`); `params` (arrays or
    ShapeDtypeStructs) only give the structure, nothing is copied."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    model = without_remat(nnx.merge(model_def.graphdef, abstract, model_def.frozen))
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    return ModelDef(graphdef, model_def.frozen)


def _num_micro_batches(batch: dict) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"every batch leaf needs the same leading micro-batch axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def accumulate(
    model_def: ModelDef,
    loss_fn: LossFn,
    params: Any,
    batch: dict,
    rng: jax.Array,
    *,
    with_grads: bool,
) -> tuple[Any, jax.Array, jax.Array, dict[str, jax.Array]]:
    """Scans the micro-batches: (summed float32 grads or None, loss sum, denominator, extras sums)."""

    def micro_loss(p, micro, key):
        loss_sum, denominator, extras = loss_fn(model_def.merge(p), micro, key)
        return loss_sum.astype(jnp.float32), (jnp.asarray(denominator, jnp.float32), extras)

    probe_micro = jax.tree.map(lambda x: x[0], batch)
    _, (_, extras_shape) = jax.eval_shape(micro_loss, params, probe_micro, rng)
    zero_extras = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), extras_shape)
    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params) if with_grads else None

    def body(carry, xs):
        grads_acc, loss_acc, denom_acc, extras_acc = carry
        micro, index = xs
        key = jax.random.fold_in(rng, index)
        if with_grads:
            (loss_sum, (denominator, extras)), grads = jax.value_and_grad(micro_loss, has_aux=True)(
                params, micro, key
            )
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
        else:
            loss_sum, (denominator, extras) = micro_loss(params, micro, key)
        extras_acc = jax.tree.map(lambda a, e: a + e.astype(jnp.float32), extras_acc, extras)
        return (grads_acc, loss_acc + loss_sum, denom_acc + denominator, extras_acc), None

    num_micro = _num_micro_batches(batch)
    init = (zero_grads, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zero_extras)
    (grads, loss_sum, denominator, extras), _ = jax.lax.scan(
        body, init, (batch, jnp.arange(num_micro, dtype=jnp.int32))
    )
    return grads, loss_sum, denominator, extras


def batch_signature(batch: dict) -> tuple:
    """Structure, shapes and dtypes: what decides the batch shardings and the compiled program
    (a cache key for per-shape objects such as `batch_shardings`)."""
    leaves, treedef = jax.tree.flatten(batch)
    return treedef, tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


_batch_signature = batch_signature  # the name grpo_loop.py used before it was public


def _safe_divide(total, count):
    return jnp.where(count > 0, total / jnp.maximum(count, 1e-9), 0.0)


def resolve_compiler_options(options: str | dict | None, mesh: Mesh) -> dict | None:
    """"auto" -> the mesh platform's tuned options (`parallel.xla_options`); None or a dict as given."""
    if isinstance(options, str):
        if options != "auto":
            raise ValueError(f"compiler_options must be 'auto', None or a dict, got {options!r}")
        return xla_options.compiler_options(mesh)
    return None if options is None else dict(options)


class TrainStep:
    """`state, metrics = step(state, batch)`: one optimiser update over accumulated micro-batches.

    metrics (replicated scalars): loss (sum / global denominator), denominator, grad_norm (before
    clipping), lr (of this update), and every loss extra as a sum under its own name.

    `compiler_options`: "auto" (the default) = `parallel.xla_options.compiler_options(mesh)`, the tuned
    options of the mesh's platform; None = XLA's defaults; or a dict passed to `jax.jit` as it is.
    """

    def __init__(
        self,
        model_def: ModelDef,
        loss_fn: LossFn,
        tx: optax.GradientTransformation,
        schedule: optax.Schedule,
        state_shardings: TrainState,
        mesh: Mesh,
        *,
        donate: bool = True,
        rules: Rules | None = None,
        compiler_options: str | dict | None = "auto",
    ):
        self.model_def = model_def
        self.rules = rules
        self.loss_fn = loss_fn
        self.compiler_options = resolve_compiler_options(compiler_options, mesh)
        self.tx = tx
        self.schedule = schedule
        self.state_shardings = state_shardings
        self.mesh = mesh
        self.donate = donate
        self._compiled: dict[Any, Callable] = {}

    def _update(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        grads, loss_sum, denominator, extras = accumulate(
            self.model_def, self.loss_fn, state.params, batch, step_rng, with_grads=True
        )
        grads = jax.tree.map(lambda g: _safe_divide(g, denominator), grads)
        grad_norm = optax.tree.norm(grads)
        # Float32 parameters (the master weights under bfloat16 compute) keep float32 gradients and AdamW
        # moments; bfloat16 storage, an opt-in (optimizer.allow_bfloat16_params), rounds every update.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": _safe_divide(loss_sum, denominator),
            "denominator": denominator,
            "grad_norm": grad_norm,
            "lr": jnp.asarray(self.schedule(state.step), jnp.float32),
            **extras,
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def compiled(self, batch: dict) -> Callable:
        """The jitted update for this batch's structure (built on first use)."""
        key = batch_signature(batch)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(
                self._update,
                in_shardings=(self.state_shardings, batch_shardings(batch, self.mesh)),
                out_shardings=(self.state_shardings, NamedSharding(self.mesh, PartitionSpec())),
                donate_argnums=(0,) if self.donate else (),
                compiler_options=self.compiler_options,
            )
        return self._compiled[key]

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        compiled = self.compiled(batch)
        if self.rules is None:
            return compiled(state, batch)
        with activation_sharding(self.mesh, self.rules):  # activation constraints apply while tracing
            return compiled(state, batch)


class EvalStep:
    """`sums = eval_step(params, batch)`: loss sum, denominator and extras over all micro-batches.

    The batch may be host (numpy) arrays: they are placed with `put_batch` first, which multi-process
    JAX requires (it refuses numpy arguments for sharded inputs). The model runs without
    rematerialisation (`forward_only`): there is no backward pass.
    """

    def __init__(self, model_def: ModelDef, loss_fn: LossFn, params_shardings: Any, mesh: Mesh, *,
                 rules: Rules | None = None):
        self.model_def = model_def
        self._forward_def: ModelDef | None = None
        self.rules = rules
        self.loss_fn = loss_fn
        self.params_shardings = params_shardings
        self.mesh = mesh
        self._compiled: dict[Any, Callable] = {}

    def _evaluate(self, params: Any, batch: dict, rng: jax.Array) -> dict:
        _, loss_sum, denominator, extras = accumulate(
            self._forward_def, self.loss_fn, params, batch, rng, with_grads=False
        )
        return {"loss_sum": loss_sum, "denominator": denominator, **extras}

    def __call__(self, params: Any, batch: dict, rng: jax.Array | None = None) -> dict:
        if self._forward_def is None:
            self._forward_def = forward_only(self.model_def, params)
        key = batch_signature(batch)
        if key not in self._compiled:
            replicated = NamedSharding(self.mesh, PartitionSpec())
            shardings = batch_shardings(batch, self.mesh)
            self._compiled[key] = (jax.jit(
                self._evaluate,
                in_shardings=(self.params_shardings, shardings, replicated),
                out_shardings=replicated,
                compiler_options=xla_options.compiler_options(self.mesh),
            ), shardings)
        program, shardings = self._compiled[key]
        if _is_host_tree(batch):
            batch = put_batch(batch, shardings)
        if rng is None:  # a replicated global array: every process may pass it to the sharded program
            replicated = NamedSharding(self.mesh, PartitionSpec())
            rng = jax.make_array_from_process_local_data(replicated, np.zeros((2,), np.uint32))
        if self.rules is None:
            return program(params, batch, rng)
        with activation_sharding(self.mesh, self.rules):
            return program(params, batch, rng)
