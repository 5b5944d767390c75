"""The parts of the GPU check and how one part runs: its own process group, time limit and files.

A part is a command run in a subprocess with its own timeout. Its output goes straight to a file
in the output folder (nothing is buffered in this process), so whatever it printed before a kill
is kept. A part that runs past its limit is killed with its whole process group (pytest's
children, the ranks of a distributed world), and the next part starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the suites with CUDA cases, one process each; tests that need CVXPY are not selected (none is
#: a CUDA case)
SUITES = (
    "test_prox.py",
    "test_segments.py",
    "test_algorithms.py",
    "test_penalty.py",
    "test_training.py",
    "test_ecosystem.py",
    "test_hashing_gradient.py",
)
#: the CUDA cases: test ids with ``cuda`` (the device fixture), graph capture and Triton tests
SELECT = "cuda or graph or triton"
#: a dry run selects fewer: on the CPU the ``cuda`` cases skip, and the Triton tests run in the
#: interpreter (minutes) and already run in ``make test``; the harness is what a dry run proves
SELECT_DRY_RUN = "cuda or graph"


@dataclass
class Part:
    """One command of the check, with the files it writes (relative to the output folder)."""

    name: str
    argv: list[str]
    timeout: float
    log: str
    files: list[str] = field(default_factory=list)
    #: the per-test line stream, for test parts
    stream: str | None = None
    # filled in when it runs
    status: str = "not reached"
    seconds: float | None = None
    note: str = ""


def test_part(suite: str, out: Path, timeout: float, workers: int, select: str) -> Part:
    """The selected cases of one test file, in their own pytest process (the project's pytest
    options kept: ``--benchmark-skip`` keeps pytest-benchmark quiet under xdist)."""
    stem = suite.removesuffix(".py")
    stream, junit = f"tests-{stem}.txt", f"junit-{stem}.xml"
    argv = [
        sys.executable, "-m", "pytest", f"conformance/{suite}", "-k", select,
        "-p", "conformance.gpu_check.plugin", f"--ws-stream={out / stream}",
        "-p", "no:cacheprovider", "-p", "no:randomly", "-W", "error",
        "--hypothesis-profile", "gpu-check", "-rfE", "--tb=short",
        f"--junitxml={out / junit}",
    ]  # fmt: skip
    if workers > 1:
        argv += ["-n", str(workers)]
    return Part(f"tests {stem}", argv, timeout, f"pytest-{stem}.txt", [junit, stream], stream)


def distributed_part(out: Path, world: int, backend: str, timeout: float) -> Part:
    """The DTensor / FSDP2 checks on one world of ``world`` ranks."""
    argv = [sys.executable, "-m", "conformance.distributed", "--world", str(world),
            "--backend", backend]  # fmt: skip
    return Part(f"distributed ({backend}, {world} rank(s))", argv, timeout, "distributed.txt")


def bench_part(name: str, module: str, out: Path, timeout: float, files: list[str],
               extra: list[str]) -> Part:  # fmt: skip
    """A benchmark module run as ``python -m MODULE --out OUT``."""
    argv = [sys.executable, "-m", module, "--out", str(out), *extra]
    return Part(name, argv, timeout, f"{name.replace(' ', '-')}.log", files)


def run_part(part: Part, out: Path, env: dict[str, str], budget_left: float) -> None:
    """Run ``part`` (output to its log file) within min(its timeout, the budget left)."""
    limit = max(1.0, min(part.timeout, budget_left))
    started = time.perf_counter()
    with open(out / part.log, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(part.argv) + "\n")
        log.flush()
        proc = subprocess.Popen(
            part.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=limit)
            part.status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            part.status = f"timed out after {limit:.0f} s"
        except BaseException:  # an interrupt of the check: leave nothing running
            _kill_group(proc)
            raise
    part.seconds = time.perf_counter() - started


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # pragma: no cover - already gone
        pass
    proc.wait()
