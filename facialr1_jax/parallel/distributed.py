"""Multi-host start-up with a single-host fallback, and reading sharded results back on every host.

`initialize_if_multihost()` is called once by every launcher before any JAX computation:
* with an explicit coordinator (arguments or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID environment variables) it joins that cluster;
* on a managed cluster that JAX can detect by itself it calls `jax.distributed.initialize()` without
  arguments and lets JAX discover the peers. `detect_cluster()` decides, from the environment and
  the local hardware only (no network at import or in the check itself):
    - GKE TPU jobs: TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES) listing several hosts;
    - multi-slice TPU: MEGASCALE_COORDINATOR_ADDRESS;
    - plain Cloud TPU VMs (`gcloud compute tpus tpu-vm create`, queued resources): the VM's TPU
      chips on the PCI bus (vendor 0x1ae0, what JAX itself checks) together with libtpu, unless
      TPU_SKIP_MDS_QUERY is set. Whether the slice spans several hosts is only in the metadata
      server, which JAX then reads inside `jax.distributed.initialize()` (a one-host slice starts a
      one-process cluster, which behaves as a single process);
    - SLURM with several tasks (SLURM_JOB_ID, SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1);
* otherwise it does nothing and the run is a single process.
Calling it again after a successful start is a no-op, so library code may call it defensively.

`to_host(tree)` turns (possibly multi-host sharded) jax arrays into numpy on every process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

_log = logging.getLogger(__name__)

# Google's PCI vendor id: the TPU chips of a Cloud TPU VM (JAX's own check in cloud_tpu_init).
GOOGLE_PCI_VENDOR_ID = "0x1ae0"
PCI_DEVICES_DIR = "/sys/bus/pci/devices"


@dataclasses.dataclass(frozen=True)
class ClusterHint:
    """A cluster `jax.distributed.initialize()` can join without arguments, and why we think so."""

    kind: str  # "gke-tpu", "multislice-tpu", "cloud-tpu-vm", "slurm", "openmpi"
    reason: str  # the evidence, for the log


def _host_list(environ) -> list[str]:
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    return [host for host in hosts.split(",") if host.strip()]


def has_tpu_chips(pci_devices_dir: str = PCI_DEVICES_DIR) -> bool:
    """True when a Google TPU chip sits on this machine's PCI bus (reads sysfs only)."""
    try:
        names = os.listdir(pci_devices_dir)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(pci_devices_dir, name, "vendor"), encoding="ascii") as stream:
                if stream.read().strip().lower() == GOOGLE_PCI_VENDOR_ID:
                    return True
        except OSError:
            continue
    return False


def _libtpu_available(environ) -> bool:
    path = environ.get("TPU_LIBRARY_PATH")
    if path and os.path.isfile(path):
        return True
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def detect_cluster(environ=None, *, pci_devices_dir: str = PCI_DEVICES_DIR,
                   libtpu_available: bool | None = None) -> ClusterHint | None:
    """The cluster this process belongs to according to the environment and local hardware, or None.

    See the module docstring for what is recognised. No network access: the Cloud TPU VM case only
    says that JAX should consult the metadata server, which `jax.distributed.initialize()` does.
    """
    environ = os.environ if environ is None else environ
    hosts = _host_list(environ)
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return ClusterHint("multislice-tpu", "MEGASCALE_COORDINATOR_ADDRESS is set")
    if len(hosts) > 1:
        return ClusterHint("gke-tpu", f"TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES list {len(hosts)} hosts")
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return ClusterHint("slurm", f"SLURM job with {environ['SLURM_NTASKS']} tasks")
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return ClusterHint("openmpi", f"Open MPI world of {environ['OMPI_COMM_WORLD_SIZE']} processes")
    if hosts or environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return None  # a one-host GKE TPU job, or the metadata server is ruled out explicitly
    if has_tpu_chips(pci_devices_dir):
        if libtpu_available is None:
            libtpu_available = _libtpu_available(environ)
        if libtpu_available:
            return ClusterHint("cloud-tpu-vm", "TPU chips on the PCI bus and libtpu installed: the pod "
                                               "slice's workers come from the TPU metadata server")
    return None


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
        elif (hint := detect_cluster()) is not None:
            _log.info("joining a %s cluster (%s)", hint.kind, hint.reason)
            jax.distributed.initialize()
            _started = True
        else:
            _log.info("single-process run: jax.distributed not initialised")
    info = process_info()
    if _started:
        _log.info("jax.distributed: process %d of %d, %d local / %d global devices", info.process_index,
                  info.process_count, info.local_device_count, info.global_device_count)
    return info


def usable_cpus() -> int:
    """CPUs this process may run on (`taskset` narrows it); what XLA:CPU sizes its thread pool by, so a
    PyTorch peer in a benchmark gets as many threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_info() -> ProcessInfo:
    return ProcessInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                       local_device_count=jax.local_device_count(), global_device_count=jax.device_count())


def to_host(tree: Any) -> Any:
    """numpy copies of every array leaf, on every process.

    An array sharded over devices of several processes is not fully addressable (`np.asarray` and
    `jax.device_get` refuse it); it is all-gathered across processes (`process_allgather`, a
    collective: every process must call this with the same tree). Fully addressable arrays are
    simply copied to the host.
    """
    from jax.experimental import multihost_utils

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(one, tree)
