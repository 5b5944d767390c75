"""The two paths of split vectors measured: bytes received, collectives, seconds, peak memory.

``python -m conformance.benchmarks.distributed --world P --bench N [--backend nccl]`` times one
``prox(w, 1.0)`` (``dim=None``) of a float64 weight of shape ``(N / 64, 64)`` under ``Shard(0)``
on P ranks, on the gather path and on the distributed ("sort") path, for a random and a chain
input; it prints the rows as JSON and as the table of ``spec/_snippets/distributed.md``.
``--memory PATH`` instead prints the growth of the peak resident memory in one such call on that
path (one world per path: a peak only grows). Not part of the conformance run.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from typing import Any

import torch.distributed as dist
from torch.distributed.tensor import Shard

import weightshare as ws
from conformance.distributed.harness import Ctx, arguments, parse, rank_session, run_ranks
from conformance.distributed.paths import sharded_path
from conformance.distributed.traffic import Traffic


def bench(ctx: Ctx, size: int, reps: int = 3) -> list[dict[str, Any]]:
    """Bytes received, collectives and seconds per rank of one ``prox`` of a ``(size / 64, 64)``
    float64 weight sharded along dim 0, ``dim=None``, on both paths."""
    rows = []
    for kind in ("random", "chain"):
        full = ctx.full(size // 64, 64, seed=11, kind=kind)
        x = ctx.shard(full, [Shard(0)])
        outs = {}
        for path in ("gather", "sort"):
            with sharded_path(path):
                ws.prox(x, 1.0)  # warm-up
                with Traffic() as traffic:
                    outs[path] = ws.prox(x, 1.0)
                times = []
                for _ in range(reps):
                    dist.barrier()
                    start = time.perf_counter()
                    ws.prox(x, 1.0)
                    dist.barrier()
                    times.append(time.perf_counter() - start)
            rows.append(
                {"P": ctx.world, "kind": kind, "N": size, "path": path, "ops": len(traffic.ops),
                 "bytes": traffic.bytes_in, "seconds": min(times)}
            )  # fmt: skip
        diff = (outs["gather"].to_local() - outs["sort"].to_local()).abs().max()
        rows[-1]["max_diff"] = rows[-2]["max_diff"] = float(diff)
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, rows)
    for i, row in enumerate(rows):  # the most loaded rank
        row["bytes"] = max(r[i]["bytes"] for r in gathered)
        row["max_diff"] = max(r[i]["max_diff"] for r in gathered)
    return rows


def bench_memory(ctx: Ctx, size: int, path: str) -> float:
    """The growth of the peak resident memory (MiB, the largest over ranks) in one ``prox`` of a
    random ``(size / 64, 64)`` float64 weight under ``Shard(0)``, ``dim=None``, on ``path``; run
    once per process (a peak only grows)."""
    with sharded_path(path):
        ws.prox(ctx.shard(ctx.full(64 * ctx.world, 64, seed=1), [Shard(0)]), 1.0)  # warm-up
        x = ctx.shard(ctx.full(size // 64, 64, seed=11), [Shard(0)])
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ws.prox(x, 1.0)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, grown)
    return max(gathered)


def bench_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`bench` as the Markdown table of the training page."""
    lines = [
        "| P | input | N | path | bytes in per rank | collectives | seconds | max difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['P']} | {r['kind']} | {r['N']:,} | {r['path']} | {r['bytes']:,} | {r['ops']} | "
            f"{r['seconds']:.3f} | {r['max_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--bench", type=int, required=True, help="the number of elements N")
    parser.add_argument("--memory", choices=("gather", "sort"), help="the peak memory of a path")
    args = parse(parser, argv)
    if args.world is None:
        with rank_session(args) as (ctx, record):
            if args.memory:
                record["memory"] = bench_memory(ctx, args.bench, args.memory)
            else:
                record["bench"] = bench(ctx, args.bench)
        return 0
    forwarded = ["--backend", args.backend, "--bench", str(args.bench)]
    if args.memory:
        forwarded += ["--memory", args.memory]
    logs, records = run_ranks("conformance.benchmarks.distributed", args.world, forwarded, 1800)
    print(logs[0], end="")
    if args.memory:
        print(f"peak memory growth, {args.memory} path: {records[0]['memory']:.1f} MiB")
    else:
        print(json.dumps(records[0]["bench"]))
        print(bench_table(records[0]["bench"]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
