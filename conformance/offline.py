"""Check a built site: it loads nothing from the network, and no math is left unrendered.

Usage: ``python -m conformance.offline SITE_DIR``. Plain outbound links (``<a href>``) are allowed;
scripts, stylesheets, fonts and images must be local. Math is written ``$...$`` / ``$$...$$`` in
the sources and arithmatex turns it into ``<span|div class="arithmatex">`` that KaTeX renders;
a ``$`` left in the page's text (outside those elements, code, scripts and styles) is math that
arithmatex did not recognise and the reader sees as literal dollar signs.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
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


_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_OPAQUE = frozenset({"code", "pre", "script", "style", "kbd", "samp", "textarea"})


class _TextDollars(HTMLParser):
    """Collects ``(line, text)`` of text nodes holding ``$`` outside math, code and scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []
        self.found: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append((tag, tag in _OPAQUE or "arithmatex" in classes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        # pop to the matching open tag (tolerates implicitly closed elements such as <p>, <li>)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if "$" in data and not any(opaque for _, opaque in self.stack):
            self.found.append((self.getpos()[0], " ".join(data.split())[:100]))


def unrendered_math_in(html: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every text node of ``html`` with a ``$`` that is not inside math
    (arithmatex), code, a script or a style: math that the build left unrendered."""
    parser = _TextDollars()
    parser.feed(html)
    parser.close()
    return parser.found


def unrendered_math(site: Path) -> list[str]:
    bad = []
    for path in sorted(site.rglob("*.html")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for line, found in unrendered_math_in(text):
            bad.append(f"{path}:{line}: unrendered math: {found!r}")
    return bad


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    site = Path(args[0] if args else "site")
    if not site.is_dir():
        print(f"no built site at {site}", file=sys.stderr)
        return 2
    bad = external_loads(site)
    math = unrendered_math(site)
    for line in bad + math:
        print(line, file=sys.stderr)
    print(f"{len(bad)} external resource(s) in {site}")
    print(f"{len(math)} text node(s) with unrendered math in {site}")
    return 1 if bad or math else 0


if __name__ == "__main__":
    raise SystemExit(main())
