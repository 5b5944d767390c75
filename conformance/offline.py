"""Check that a built site loads nothing from the network: no external src/href resources.

Usage: ``python -m conformance.offline SITE_DIR``. Plain outbound links (``<a href>``) are allowed;
scripts, stylesheets, fonts and images must be local.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_EXTERNAL = re.compile(
    r"""<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I
)
_CSS_URL = re.compile(r"""url\(\s*["']?(?:https?:)?//""", re.I)


def external_loads(site: Path) -> list[str]:
    bad = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            text = path.read_text(encoding="utf-8", errors="replace")
            bad += [f"{path}: {m.group(0)}" for m in _EXTERNAL.finditer(text)]
        elif path.suffix == ".css":
            text = path.read_text(encoding="utf-8", errors="replace")
            bad += [f"{path}: {m.group(0)}" for m in _CSS_URL.finditer(text)]
    return bad


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    site = Path(args[0] if args else "site")
    if not site.is_dir():
        print(f"no built site at {site}", file=sys.stderr)
        return 2
    bad = external_loads(site)
    for line in bad:
        print(line, file=sys.stderr)
    print(f"{len(bad)} external resource(s) in {site}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
