"""Multi-host start-up: single-process fallback, argument checks, and a real 2-process CPU cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from facialr1_jax.parallel import distributed


def test_single_process_fallback(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.initialize_if_multihost()
    assert info.process_count == 1 and info.process_index == 0 and info.is_main
    assert info.global_device_count == info.local_device_count


def test_coordinator_without_process_ids_is_an_error(monkeypatch):
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="num_processes / process_id"):
        distributed.initialize_if_multihost(coordinator_address="127.0.0.1:1234")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_join_one_cluster_from_environment(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""
        import jax
        jax.config.update("jax_platforms", "cpu")
        from facialr1_jax.parallel import initialize_if_multihost
        info = initialize_if_multihost()
        again = initialize_if_multihost()  # a second call is a no-op
        print("RESULT", info.process_index, info.process_count, info.global_device_count, again.process_count)
    """))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    # `timeout -s KILL`: jax.distributed traps SIGTERM, so a hung worker would survive a polite kill.
    workers = [subprocess.Popen(["timeout", "-s", "KILL", "90", sys.executable, str(script)],
                                env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    results = sorted(line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == [["0", "2", "2", "2"], ["1", "2", "2", "2"]], outputs


# ----------------------------------------------------------------------------- cluster detection
def _pci_bus(tmp_path, vendors):
    """A fake /sys/bus/pci/devices with one device per vendor id."""
    root = tmp_path / "pci"
    for index, vendor in enumerate(vendors):
        device = root / f"0000:00:{index:02x}.0"
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
    root.mkdir(exist_ok=True)
    return str(root)


def test_plain_cloud_tpu_vm_is_detected_from_its_pci_chips(tmp_path):
    tpu_vm = _pci_bus(tmp_path, ["0x8086", distributed.GOOGLE_PCI_VENDOR_ID])
    hint = distributed.detect_cluster({}, pci_devices_dir=tpu_vm, libtpu_available=True)
    assert hint is not None and hint.kind == "cloud-tpu-vm"
    # Not without libtpu, not when the metadata server is ruled out, not on a machine without TPU chips.
    assert distributed.detect_cluster({}, pci_devices_dir=tpu_vm, libtpu_available=False) is None
    assert distributed.detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}, pci_devices_dir=tpu_vm,
                                      libtpu_available=True) is None
    gpu_host = _pci_bus(tmp_path / "gpu", ["0x10de", "0x8086"])
    assert distributed.detect_cluster({}, pci_devices_dir=gpu_host, libtpu_available=True) is None


@pytest.mark.parametrize("environ,kind", [
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "2"}, "gke-tpu"),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, "gke-tpu"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1", "MEGASCALE_NUM_SLICES": "2"}, "multislice-tpu"),
    ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4"}, "slurm"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "w0", "TPU_WORKER_ID": "0"}, None),  # a one-host GKE TPU job
    ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "1"}, None),
    ({}, None),
])
def test_cluster_environments(tmp_path, environ, kind):
    no_tpu = _pci_bus(tmp_path, ["0x8086"])
    hint = distributed.detect_cluster(environ, pci_devices_dir=no_tpu, libtpu_available=True)
    assert (hint.kind if hint else None) == kind


def test_detected_cluster_is_joined_without_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "_started", False)
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(distributed, "detect_cluster",
                        lambda: distributed.ClusterHint("cloud-tpu-vm", "test"))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    distributed.initialize_if_multihost()
    assert calls == [((), {})]  # JAX reads the TPU metadata server itself
