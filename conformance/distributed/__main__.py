"""The DTensor / FSDP2 checks (spec/training.md, DIST-*) as a command.

``python -m conformance.distributed --world N [--backend nccl]`` starts N ranks, prints each
check's result and exits non-zero on any failure: the entry point of the GPU check (NCCL, one
CUDA device per rank, one rank per device; a single GPU runs ``--world 1``).

``python -m conformance.distributed RANK WORLD PORT OUT [--backend B]`` is one rank: it runs every
check meant for a world of WORLD ranks and writes ``{check: "ok" | the error}`` as JSON to OUT.
"""

from __future__ import annotations

import sys

from conformance.distributed.checks import CHECKS
from conformance.distributed.harness import arguments, merged, parse, rank_session, run_ranks
from conformance.distributed.registry import run_checks


def main(argv: list[str]) -> int:
    args = parse(arguments(__doc__), argv)
    if args.world is None:
        with rank_session(args) as (ctx, record):
            run_checks(ctx, record)
        return 0
    logs, records = run_ranks(
        "conformance.distributed", args.world, ["--backend", args.backend], timeout=1800
    )
    print(logs[0], end="")
    results = merged(records)
    for c in CHECKS.values():
        print(f"{c.name}: {results.get(c.name, f'skipped (for worlds {c.worlds})')}")
    return 0 if all(s == "ok" for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
