"""The "measured at commit X on DATE" line every generated benchmark table starts with (the
commit and date by :mod:`experiments._stamp`'s rule)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from experiments._stamp import current_commit, today

ROOT = Path(__file__).resolve().parents[2]


def stamp(commit: str | None, date: str | None) -> str:
    """``"Measured at commit X on DATE."``; an unknown part reads ``not recorded``."""
    return f"Measured at commit {commit or 'not recorded'} on {date or 'not recorded'}.\n"


def snippet_main(
    doc: str, snippet: Path, measure: Callable[[str], str], argv: list[str] | None
) -> int:
    """A benchmark script's ``main``: on one torch thread, ``measure(stamp line)`` renders the
    tables, which are printed and, with ``--write``, written to ``snippet``."""
    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {snippet.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    text = measure(stamp(current_commit(), today()))
    print(text)
    if args.write:
        snippet.write_text(text, encoding="utf-8")
    return 0
