"""``summary.md`` of the GPU check: written before the first part (every part "not reached") and
rewritten after each, from the parts' statuses and their per-test line streams."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conformance.gpu_check.parts import Part
from conformance.gpu_check.plugin import MARK

OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED")


def read_stream(path: Path) -> tuple[Counter[str], str | None, list[str]]:
    """Counts per outcome, the test running when the stream ends (if unfinished) and the first
    lines naming a CUDA error left behind or a failed test."""
    counts: Counter[str] = Counter()
    running: str | None = None
    notable: list[str] = []
    if not path.exists():
        return counts, None, notable
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "START":
            running = rest
        elif word in OUTCOMES:
            counts[word] += 1
            running = None
            if word in ("FAILED", "ERROR") and len(notable) < 5:
                notable.append(line)
        elif word == "STOP" and MARK in rest:
            notable.insert(0, rest)
    return counts, running, notable


def part_row(part: Part, out: Path) -> str:
    tests = ""
    note = part.note
    if part.stream is not None:
        counts, running, notable = read_stream(out / part.stream)
        if counts or running:
            tests = " / ".join(str(counts[o]) for o in OUTCOMES)
        if running and part.status.startswith("timed out"):
            note = f"killed while running `{running}`. " + note
        cuda = [n for n in notable if MARK in n]
        if cuda:
            note = f"**{cuda[0]}**; later tests of the file not run. " + note
        elif notable and not part.status.startswith("passed"):
            note = note + " first: `" + notable[0] + "`"
    seconds = "" if part.seconds is None else f"{part.seconds:.0f}"
    files = ", ".join(f"`{f}`" for f in [part.log, *part.files])
    return f"| {part.name} | {part.status} | {tests} | {seconds} | {files} | {note.strip()} |"


def render(parts: list[Part], out: Path, header: list[str]) -> str:
    lines = [
        "# GPU check",
        "",
        *header,
        "",
        "| part | status | tests passed / failed / error / skipped | s | files | note |",
        "| --- | --- | --- | ---: | --- | --- |",
        *(part_row(p, out) for p in parts),
        "",
    ]
    return "\n".join(lines)


def write(parts: list[Part], out: Path, header: list[str]) -> None:
    """Rewrite ``summary.md`` atomically (a kill never leaves half a file)."""
    tmp = out / "summary.md.tmp"
    tmp.write_text(render(parts, out, header), encoding="utf-8")
    tmp.replace(out / "summary.md")
