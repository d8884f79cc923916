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
