"""The GPU check: ``make gpu-check OUT=dir`` (or ``python3 -m conformance.gpu_check --out dir``).

For a bare CUDA machine with its own python3 (torch, triton, numpy, scipy, pytest, hypothesis; no
cvxpy, no network, no virtual environment). It makes the package importable from the checkout
without installing anything (a tree of links, as the docs build uses), runs the CUDA cases of the
conformance suite (test ids with ``cuda``, plus the CUDA-only tests), the DTensor/FSDP2 checks on
NCCL, then the GPU benchmark, and writes ``pytest.txt``, ``junit.xml``, ``distributed.txt``,
``gpu_bench.json`` and ``gpu_bench.md`` to the output folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the suites with CUDA cases; tests that need CVXPY are not selected (none is a CUDA case)
SUITES = (
    "test_prox.py",
    "test_segments.py",
    "test_algorithms.py",
    "test_penalty.py",
    "test_training.py",
    "test_ecosystem.py",
)


def package_tree() -> Path:
    """``build/gpu-path/weightshare``: links to ``accelerated/*`` plus ``reference``."""
    top = ROOT / "build" / "gpu-path"
    pkg = top / "weightshare"
    pkg.mkdir(parents=True, exist_ok=True)
    for item in [*sorted((ROOT / "accelerated").iterdir()), ROOT / "reference"]:
        link = pkg / item.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(item)
    return top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="a small benchmark (smoke run)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(package_tree()), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("CI", "true")
    started = time.perf_counter()
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", *(f"conformance/{s}" for s in SUITES),
         "-k", "cuda or graph or triton", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "addopts=", "-W", "error", f"--junitxml={out / 'junit.xml'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    (out / "pytest.txt").write_text(tests.stdout + tests.stderr)
    print(tests.stdout[-4000:], tests.stderr[-2000:], sep="\n", flush=True)
    print(f"conformance: exit {tests.returncode} in {time.perf_counter() - started:.0f} s")
    # the DTensor / FSDP2 checks on NCCL: one rank per device (one GPU still runs every path)
    import torch

    world = max(1, torch.cuda.device_count())
    dist = subprocess.run(
        [sys.executable, "-m", "conformance.distributed", "--world", str(world),
         "--backend", "nccl"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    (out / "distributed.txt").write_text(dist.stdout + dist.stderr)
    print(dist.stdout[-2000:], dist.stderr[-2000:], sep="\n", flush=True)
    print(f"distributed (NCCL, {world} rank(s)): exit {dist.returncode}")
    bench_cmd = [sys.executable, "-m", "conformance.benchmarks.gpu", "--out", str(out)]
    bench = subprocess.run(bench_cmd + (["--quick"] if args.quick else []), cwd=ROOT, env=env,
                           check=False)  # fmt: skip
    print(f"total {time.perf_counter() - started:.0f} s")
    return tests.returncode or dist.returncode or bench.returncode


if __name__ == "__main__":
    raise SystemExit(main())
