"""Run a module as a world of local processes: ``python -m MODULE RANK WORLD PORT *ARGS`` each,
or a script as ``torchrun`` would (``RANK``, ``WORLD_SIZE``, ``MASTER_PORT``... in the environment).

Shared by the multi-process conformance checks (DDP in ``test_training``, DTensor/FSDP2 in
``test_distributed``); one torch thread per process, as the machines running CI are small.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_world(module: str, world: int, args: list[str], timeout: float = 120.0) -> list[str]:
    """Start ``world`` ranks of ``module`` (a module name, or the path of a script run as under
    ``torchrun``) and wait; AssertionError with the log of a failed rank.

    Returns every rank's combined stdout and stderr.
    """
    port = free_port()
    # the checkout first, then whatever made the parent's imports work (on a machine where nothing
    # is installed, the GPU check's tree of links that makes ``weightshare`` importable)
    paths = [str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    script = module.endswith(".py")
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}

    def command(rank: int) -> list[str]:
        if script:
            return [sys.executable, module, *args]
        return [sys.executable, "-m", module, str(rank), str(world), str(port), *args]

    def environ(rank: int) -> dict[str, str]:
        if script:
            return {**env, **launch, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        return env

    procs = [
        subprocess.Popen(
            command(r),
            cwd=ROOT,
            env=environ(r),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} of {module} exited with {p.returncode}:\n{log}"
    return logs
