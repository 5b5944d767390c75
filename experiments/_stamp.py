"""When and where a result was measured: the checkout's commit and the UTC date (EXP-63).

One rule for every generated table and ``summary.json``: the 12-digit commit of the checkout,
with ``-dirty`` when tracked files other than the generated tables have uncommitted changes
(several tables are written in one ``make bench``: those written first must not mark the later
ones dirty); ``None`` where git or the repository is not available.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: what the benchmarks and experiments write: changes there do not make a measurement "dirty"
GENERATED = ("spec/_snippets", "spec/experiments/assets")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def current_commit(root: Path = ROOT) -> str | None:
    """The commit of ``root`` (``-dirty``: changes outside :data:`GENERATED`), or ``None``."""
    try:
        head = _git(root, "rev-parse", "--short=12", "HEAD")
        excluded = [f":(exclude){path}" for path in GENERATED]
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if changed else "")) or None


def today() -> str:
    """The UTC date, ``YYYY-MM-DD``."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()
