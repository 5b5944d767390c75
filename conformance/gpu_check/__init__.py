"""The GPU check: ``make gpu-check OUT=dir`` (``python3 -m conformance.gpu_check --out dir``).

For a bare CUDA machine with its own python3 (torch, triton, numpy, scipy, pytest, hypothesis; no
cvxpy, no network, nothing installed). The package is made importable from the checkout (a tree of
links, as the docs build uses) for this process and every child, ranks included. Each part runs in
its own subprocess with its own time limit, and its results are on disk as soon as they exist:

* ``summary.md``: written first (every part "not reached") and rewritten after each part;
* the prox benchmark (``gpu_bench.json``, rows appended as they are measured) and the training
  benchmark (``gpu_train.json``); ``gpu_bench.md`` renders both, after each;
* the CUDA cases of the conformance suite, one process per test file: a per-test line stream
  (``tests-<file>.txt``), the pytest output and a junit file each; after every test the device is
  synchronized, and a test that left a CUDA error is named and stops its file's run;
* the DTensor / FSDP2 checks on NCCL (``distributed.txt``).

``--dry-run`` runs the same harness on the CPU: Triton kernels in the interpreter, the distributed
checks on gloo, both benchmarks at tiny sizes. It proves the harness, not the GPU; CI runs it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conformance.gpu_check import summary
from conformance.gpu_check.parts import (
    ROOT,
    SELECT,
    SELECT_DRY_RUN,
    SUITES,
    Part,
    bench_part,
    distributed_part,
    run_part,
    test_part,
)

PARTS = ("prox-bench", "train-bench", "tests", "distributed")
#: seconds kept back for writing the summary when the budget runs out
RESERVE = 5.0


def package_tree() -> Path:
    """``build/gpu-path/weightshare``: links to ``accelerated/*`` plus ``reference``."""
    top = ROOT / "build" / "gpu-path"
    pkg = top / "weightshare"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for item in [*sorted((ROOT / "accelerated").iterdir()), ROOT / "reference"]:
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item)
    return top


def child_env(dry_run: bool, launch_blocking: bool) -> dict[str, str]:
    """The environment of every part: the package and the checkout importable, one thread per
    torch op on small machines' CPU parts, the interpreter for a dry run."""
    env = dict(os.environ)
    paths = [str(package_tree()), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("CI", "true")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    else:
        env.pop("TRITON_INTERPRET", None)
    if launch_blocking:
        env["CUDA_LAUNCH_BLOCKING"] = "1"
    return env


def plan(args: argparse.Namespace, out: Path) -> list[Part]:
    """The parts to run, in order: the measurements first (they are what GPU time is scarce
    for), then the conformance cases, then the distributed checks."""
    dry = ["--dry-run"] if args.dry_run else (["--quick"] if args.quick else [])
    parts: list[Part] = []
    if "prox-bench" in args.parts:
        parts.append(
            bench_part(
                "prox bench",
                "conformance.benchmarks.gpu",
                out,
                args.bench_timeout,
                ["gpu_bench.json", "gpu_bench.md"],
                dry,
            )
        )
    if "train-bench" in args.parts:
        parts.append(
            bench_part(
                "train bench",
                "conformance.benchmarks.gpu_train",
                out,
                args.bench_timeout,
                ["gpu_train.json", "gpu_bench.md"],
                dry,
            )
        )
    if "tests" in args.parts:
        select = args.select or (SELECT_DRY_RUN if args.dry_run else SELECT)
        parts += [test_part(s, out, args.test_timeout, args.workers, select) for s in args.suites]
    if "distributed" in args.parts:
        world, backend = (2, "gloo") if args.dry_run else (args.world, "nccl")
        parts.append(distributed_part(out, world, backend, args.dist_timeout))
    return parts


def header(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """Where and when: date, commit, python, torch, Triton and the device (asked of a child
    python with the parts' environment, so a broken install is reported, not raised)."""
    probe = (
        "import sys, torch\n"
        "try:\n import triton; tv = triton.__version__\n"
        "except ImportError:\n tv = 'not installed'\n"
        "dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device'\n"
        "print(f'python {sys.version.split()[0]}, torch {torch.__version__}, triton {tv}; {dev}')"
    )
    try:
        found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                               text=True, timeout=120, check=False)  # fmt: skip
        versions = found.stdout.strip() or found.stderr.strip().splitlines()[-1]
    except (subprocess.TimeoutExpired, IndexError) as e:
        versions = f"could not ask the python: {e!r}"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (no git checkout)"
    mode = "**dry run on the CPU** (Triton interpreter, gloo): proves the harness, not the GPU"
    return [
        f"- when: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"commit {commit}",
        f"- {versions}",
        f"- mode: {mode if args.dry_run else 'GPU'}"
        + ("; CUDA_LAUNCH_BLOCKING=1" if args.launch_blocking else ""),
        f"- command: `python -m conformance.gpu_check {' '.join(args.argv)}`",
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m conformance.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="the output folder")
    p.add_argument("--dry-run", action="store_true", help="the whole harness on the CPU")
    p.add_argument("--quick", action="store_true", help="small benchmark sizes (GPU smoke run)")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, from {', '.join(PARTS)} (default: all)",
    )
    p.add_argument("--suites", default=",".join(SUITES), help="the test files of the tests part")
    p.add_argument(
        "--select",
        default=None,
        help=f"pytest -k expression (default {SELECT!r}; dry run {SELECT_DRY_RUN!r})",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds for the whole check; a part gets at most what is left",
    )
    p.add_argument("--test-timeout", type=float, default=150.0, help="seconds per test file")
    p.add_argument("--bench-timeout", type=float, default=150.0, help="seconds per benchmark")
    p.add_argument("--dist-timeout", type=float, default=150.0, help="seconds, distributed")
    p.add_argument("--world", type=int, default=1, help="NCCL ranks (one per GPU)")
    p.add_argument("--workers", type=int, default=1, help="pytest-xdist workers per test file")
    p.add_argument(
        "--launch-blocking",
        action="store_true",
        help="CUDA_LAUNCH_BLOCKING=1: pinpoints the kernel of an asynchronous error",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(args.parts) - set(PARTS)) + sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser().error(f"unknown part or suite: {', '.join(unknown)}")
    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(args.dry_run, args.launch_blocking)
    parts = plan(args, out)
    head = header(args, env)
    summary.write(parts, out, head)
    for part in parts:
        left = args.budget - (time.perf_counter() - started) - RESERVE
        if left < 1.0:
            part.status = "not reached (budget spent)"
            continue
        part.status = "running"
        summary.write(parts, out, head)
        print(f"[{time.perf_counter() - started:5.0f} s] {part.name} ...", flush=True)
        run_part(part, out, env, left)
        if "bench" in part.name:
            from conformance.benchmarks import gpu_tables

            gpu_tables.write(out)
        summary.write(parts, out, head)
        print(f"[{time.perf_counter() - started:5.0f} s] {part.name}: {part.status}", flush=True)
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0 if all(p.status == "passed" for p in parts) else 1
