"""``python -m weightshare COMMAND``: the package's commands.

``storage FILE [FILE ...]``: the storage table of files written by ``ws.save`` (spec STORE-11).
"""

from __future__ import annotations

import sys

from ._storage import main as storage_main

COMMANDS = {"storage": storage_main}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m weightshare {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
