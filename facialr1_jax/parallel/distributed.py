"""Multi-host start-up with a single-host fallback.

`initialize_if_multihost()` is called once by every launcher before any JAX computation:
* with an explicit coordinator (arguments or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID environment variables) it joins that cluster;
* on a managed cluster that JAX can detect by itself (Cloud TPU pod slices, SLURM, Open MPI) it calls
  `jax.distributed.initialize()` without arguments and lets JAX discover the peers;
* otherwise it does nothing and the run is a single process.
Calling it again after a successful start is a no-op, so library code may call it defensively.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

_log = logging.getLogger(__name__)

# Environment markers of clusters that `jax.distributed.initialize()` auto-detects.
_AUTO_DETECTED_CLUSTER_VARIABLES = (
    "TPU_WORKER_HOSTNAMES",  # Cloud TPU pod slices
    "MEGASCALE_COORDINATOR_ADDRESS",  # multi-slice TPU
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
)

_started = False


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int

    @property
    def is_main(self) -> bool:
        """Process 0 writes logs, reports and exported files."""
        return self.process_index == 0


def _cluster_size_from_environment() -> int:
    if "SLURM_JOB_ID" in os.environ:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_SIZE"])
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return max(1, len([h for h in hosts.split(",") if h]))


def initialize_if_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: list[int] | None = None) -> ProcessInfo:
    """Starts `jax.distributed` when this is a multi-process run; see the module docstring."""
    global _started
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])

    if not _started:
        if coordinator_address is not None:
            if num_processes is None or process_id is None:
                raise ValueError(
                    f"coordinator {coordinator_address!r} given without num_processes / process_id "
                    "(pass them or set JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
            jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                       process_id=process_id, local_device_ids=local_device_ids)
            _started = True
        elif any(v in os.environ for v in _AUTO_DETECTED_CLUSTER_VARIABLES) and _cluster_size_from_environment() > 1:
            jax.distributed.initialize()
            _started = True
        else:
            _log.info("single-process run: jax.distributed not initialised")
    info = process_info()
    if _started:
        _log.info("jax.distributed: process %d of %d, %d local / %d global devices", info.process_index,
                  info.process_count, info.local_device_count, info.global_device_count)
    return info


def process_info() -> ProcessInfo:
    return ProcessInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                       local_device_count=jax.local_device_count(), global_device_count=jax.device_count())
