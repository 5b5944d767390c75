"""One process as a rank of a world, and a world of them started and read back.

A rank is ``python -m MODULE RANK WORLD PORT OUT [--backend B] ...``: :func:`rank_session` joins
the process group and writes what the rank recorded as JSON to OUT (``{rank}`` in OUT is the
rank), also when it fails halfway. :func:`run_ranks` starts a world of such processes and reads
every rank's record; :func:`merged` folds per-check records into one result per check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DeviceMesh, DTensor, distribute_tensor, init_device_mesh

from conformance.distributed.spawn import run_world


@dataclass
class Ctx:
    """This rank: its place in the world, its device, and the 1-D mesh of all ranks."""

    rank: int
    world: int
    device: torch.device
    mesh: DeviceMesh

    def full(self, *shape: int, seed: int = 0, kind: str = "random") -> torch.Tensor:
        """The same float64 tensor on every rank."""
        rng = np.random.default_rng(seed)
        n = int(np.prod(shape))
        if kind == "random":
            x = rng.standard_normal(n)
        elif kind == "chain":
            from conformance.strategies import chain

            x = rng.permutation(chain(n, 1.0))
        elif kind == "ties":
            x = rng.integers(-3, 4, n).astype(np.float64)
        else:
            raise ValueError(kind)
        return torch.from_numpy(x).reshape(shape).to(self.device)

    def shard(self, full: torch.Tensor, placements: list[Any], mesh: Any = None) -> DTensor:
        """``full`` (the same on every rank) laid out on ``mesh`` (default: all ranks)."""
        return distribute_tensor(full, mesh or self.mesh, placements, src_data_rank=None)


def arguments(description: str) -> argparse.ArgumentParser:
    """The command line of a launcher: one rank (``RANK WORLD PORT OUT``), or ``--world N``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rank", nargs="?", type=int)
    parser.add_argument("world_size", nargs="?", type=int)
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("out", nargs="?", help="where the rank writes its JSON record")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--world", type=int, help="start this many ranks and report")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The arguments, with either ``--world`` or all four of a rank's."""
    args = parser.parse_args(argv)
    if args.world is None and None in (args.rank, args.world_size, args.port, args.out):
        parser.error("give --world N, or RANK WORLD PORT OUT for one rank")
    return args


@contextmanager
def rank_session(args: argparse.Namespace) -> Iterator[tuple[Ctx, dict[str, Any]]]:
    """This process as rank ``args.rank``: its context and the record that ends up in OUT."""
    rank, world = args.rank, args.world_size
    warnings.simplefilter("error")
    # FSDP2 over TP's local outputs (views); harmless here: the model has no in-place op
    warnings.filterwarnings("ignore", "FSDP2-wrapped module .* returned a view tensor")
    torch.set_num_threads(1)
    if args.backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        args.backend, init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    record: dict[str, Any] = {}
    try:
        yield Ctx(rank, world, device, init_device_mesh(device.type, (world,))), record
    finally:
        Path(args.out.format(rank=rank)).write_text(json.dumps(record, indent=1))
        dist.destroy_process_group()


def run_ranks(
    module: str, world: int, args: list[str], timeout: float
) -> tuple[list[str], list[dict[str, Any]]]:
    """Start ``world`` ranks of ``module`` and wait: every rank's log and its record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank{rank}.json")
        logs = run_world(module, world, [out, *args], timeout)
        return logs, [json.loads(Path(out.format(rank=r)).read_text()) for r in range(world)]


def merged(records: list[dict[str, str]]) -> dict[str, str]:
    """Per check: "ok" when every rank says so, else the first rank's failure."""
    out: dict[str, str] = {}
    for name in records[0]:
        fails = [f"rank {r}: {res[name]}" for r, res in enumerate(records) if res[name] != "ok"]
        out[name] = fails[0] if fails else "ok"
    return out
