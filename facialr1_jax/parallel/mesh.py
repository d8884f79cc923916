"""Device meshes with the project's three axes: `data`, `fsdp`, `tensor`.

`data` replicates parameters and splits the batch; `fsdp` splits the batch too but also shards
parameters (gathered per layer when used); `tensor` splits attention heads, MLP width and vocabulary.
All axes are `AxisType.Auto`, so GSPMD propagates shardings from the constraints we place.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh over `devices` (default: all) with the axes of `shape`, e.g. {"fsdp": 4, "tensor": 2}.

    Axes missing from `shape` get size 1, so rules tables can always name all three. At most one axis may
    be -1, meaning "whatever the other axes leave". The product must equal the number of devices.
    """
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {list(MESH_AXES)}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    bad = {axis: size for axis, size in sizes.items() if size == 0 or size < -1}
    if bad:
        raise ValueError(f"mesh axis sizes must be positive (or -1), got {bad}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"{len(devices)} devices cannot be split into a mesh with fixed axes {dict(shape)}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, but {len(devices)} are given")
    axis_shape = tuple(sizes[axis] for axis in MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(axis_shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices, dtype=object).reshape(axis_shape), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))
