"""Meshes, logical-axis sharding rules and multi-host start-up.

    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    shard_model(model, mesh, TRAINING_RULES)          # parameters onto the mesh
    with activation_sharding(mesh, TRAINING_RULES):   # activation constraints while tracing
        logits = jax.jit(forward)(...)
"""

from facialr1_jax.parallel.distributed import (
    ClusterHint,
    ProcessInfo,
    detect_cluster,
    initialize_if_multihost,
    process_info,
    to_host,
    usable_cpus,
)
from facialr1_jax.parallel.mesh import MESH_AXES, make_mesh
from facialr1_jax.parallel.rules import (
    SAMPLING_RULES,
    TRAINING_RULES,
    Rules,
    activation_sharding,
    constrain,
    logical_to_spec,
    shard_model,
    state_shardings,
    variable_logical_axes,
    variable_sharding,
)

__all__ = [
    "ClusterHint",
    "MESH_AXES",
    "ProcessInfo",
    "Rules",
    "SAMPLING_RULES",
    "TRAINING_RULES",
    "activation_sharding",
    "constrain",
    "detect_cluster",
    "initialize_if_multihost",
    "logical_to_spec",
    "make_mesh",
    "process_info",
    "shard_model",
    "state_shardings",
    "to_host",
    "usable_cpus",
    "variable_logical_axes",
    "variable_sharding",
]
