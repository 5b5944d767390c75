"""Turn a pytest-benchmark JSON of ``test_bench_prox.py`` into the performance tables.

``python -m conformance.benchmarks.report bench.json`` prints the tables and writes
``spec/_snippets/performance.md`` (included by ``spec/performance.md``). Every ratio is computed
against baselines measured in the same run: ``argsort`` (``np.argsort`` + gather, the limit) and
``scipy`` (argsort + ``scipy.optimize.isotonic_regression`` + scatter).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from ._stamp import stamp

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "spec" / "_snippets" / "performance.md"
IMPLS = ("argsort", "scipy", "torch.sort", "auto", "pava", "rounds", "search", "hull")

Key = tuple[str, str, int, int]  # dtype, kind, rows, d


Ragged = dict[tuple[str, str], dict[str, float]]  # (dtype, impl) -> {"ragged"|"concatenated": s}


def load(path: Path) -> tuple[dict[Key, dict[str, float]], list[dict], dict]:
    """(median seconds by case and impl, memory results, machine info) of a benchmark JSON; the
    ragged cases are in ``info["ragged"]``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    times: dict[Key, dict[str, float]] = defaultdict(dict)
    ragged: Ragged = defaultdict(dict)
    memory = []
    commit = data.get("commit_info", {})
    info: dict = {
        "machine": data.get("machine_info", {}),
        # when and where pytest-benchmark measured, not when the report is written
        "commit": (commit.get("id") or "")[:12] + ("-dirty" if commit.get("dirty") else "")
        if commit.get("id")
        else None,
        "date": str(data["datetime"])[:10] if data.get("datetime") else None,
    }
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info", {})
        versions = {k: extra[k] for k in ("torch", "numpy", "scipy") if k in extra}
        info.setdefault("versions", versions)
        info.setdefault("threads", extra.get("torch_threads"))
        if "memory" in extra:
            memory.append(extra["memory"])
            continue
        if extra.get("suite") in ("hashed", "coding"):  # hashed_table; coding.py's own snippet
            continue
        if "what" in extra:
            ragged[(extra["dtype"], extra["impl"])][extra["what"]] = bench["stats"]["median"]
            info["ragged_scale"] = extra["scale"]
            continue
        key = (extra["dtype"], extra["kind"], extra["rows"], extra["d"])
        times[key][extra["impl"]] = bench["stats"]["median"]
    info["ragged"] = dict(ragged)
    return times, memory, info


def _ms(t: float | None) -> str:
    if t is None:
        return "—"
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _shape(rows: int, d: int) -> str:
    return f"{rows}×{d}" if rows > 1 else f"1e{len(str(d)) - 1}"


def _ratio(row: dict[str, float], a: str, b: str) -> str:
    return f"{row[a] / row[b]:.2f}" if a in row and b in row and row[b] > 0 else "—"


def time_table(times: dict[Key, dict[str, float]], dtype: str, kind: str) -> str:
    keys = sorted(k for k in times if k[0] == dtype and k[1] == kind)
    keys.sort(key=lambda k: (k[2] > 1, k[3]))
    head = "| d | " + " | ".join(IMPLS) + " | auto / argsort | scipy / auto |"
    lines = [head, "|" + " ---: |" * (len(IMPLS) + 3)]
    for key in keys:
        row = times[key]
        cells = [_ms(row.get(i)) for i in IMPLS]
        lines.append(
            f"| {_shape(key[2], key[3])} | "
            + " | ".join(cells)
            + f" | {_ratio(row, 'auto', 'argsort')} | {_ratio(row, 'scipy', 'auto')} |"
        )
    return "\n".join(lines) + "\n"


def ragged_table(ragged: Ragged) -> str:
    """``prox_many`` of the scaled ResNet-50 weights against one prox of the concatenation."""
    lines = [
        "| dtype | method | prox_many (ms) | one prox of the concatenation (ms) | ratio |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for (dtype, impl), row in sorted(ragged.items()):
        cells = [_ms(row.get("ragged")), _ms(row.get("concatenated"))]
        ratio = _ratio(row, "ragged", "concatenated")
        lines.append(f"| {dtype} | {impl} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def goals(times: dict[Key, dict[str, float]], memory: list[dict], ragged: Ragged) -> str:
    """The goal checklist: met / not met with the measured numbers."""
    out = ["| goal | measured | met |", "| --- | --- | --- |"]

    def line(goal: str, measured: str, ok: bool | None) -> None:
        out.append(f"| {goal} | {measured} | {'—' if ok is None else 'yes' if ok else 'no'} |")

    for dtype in ("float32", "float64"):
        row = times.get((dtype, "random", 1, 10**6), {})
        if {"auto", "argsort", "scipy"} <= row.keys():
            r1 = row["auto"] / row["argsort"]
            r2 = row["scipy"] / row["auto"]
            line(f"auto ≤ 1.2× argsort, d = 1e6, {dtype}", f"{r1:.2f}×", r1 <= 1.2)
            line(f"auto ≥ 1.35× faster than scipy prox, d = 1e6, {dtype}", f"{r2:.2f}×", r2 >= 1.35)
        batch = times.get((dtype, "random", 256, 4096), {})
        if {"auto", "argsort"} <= batch.keys():
            r = batch["auto"] / batch["argsort"]
            line(f"256×4096 batch: auto ≤ 1.3× batched argsort, {dtype}", f"{r:.2f}×", r <= 1.3)
    for impl in ("auto", "pava", "search", "hull"):
        worst, where = 0.0, ""
        for (dtype, kind, rows, d), row in times.items():
            other = times.get((dtype, "random", rows, d), {})
            if kind == "chain" and impl in row and impl in other:
                r = row[impl] / other[impl]
                if r > worst:
                    worst, where = r, f"{_shape(rows, d)} {dtype}"
        if where:
            goal = f"{impl}: chain ≤ 1.1× random (worst case)"
            line(goal, f"{worst:.2f}× ({where})", worst <= 1.1)
    for (dtype, impl), row in sorted(ragged.items()):
        if {"ragged", "concatenated"} <= row.keys():
            r = row["ragged"] / row["concatenated"]
            goal = f"ResNet-50 shapes: prox_many ≤ 2.5× prox of the concatenation, {impl} {dtype}"
            line(goal, f"{r:.2f}×", r <= 2.5)
    for m in sorted(memory, key=lambda m: (m["method"], m["dtype"])):
        limit = 8 if m["method"] == "auto" else 16
        line(
            f"memory, d = 1e7, {m['method']} {m['dtype']}: ≤ {limit}× input",
            f"{m['ratio']:.1f}× ({m['extra_bytes'] / 2**20:.0f} MiB)",
            m["ratio"] <= limit,
        )
    return "\n".join(out) + "\n"


def hashed_table(path: Path) -> str:
    """``test_bench_hashed.py``'s cases: ms and the ratios to ``dense`` and to ``hashed-old``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    ms = {b["extra_info"]["impl"]: b["stats"]["median"] * 1e3 for b in data["benchmarks"]
          if b.get("extra_info", {}).get("suite") == "hashed"}  # fmt: skip
    if not ms:
        return ""
    lines = [
        "### Hashed layer, forward + backward (ms)\n",
        "| layer | ms | / dense | / hashed-old |",
        "| --- | ---: | ---: | ---: |",
    ]
    for impl, t in ms.items():
        dense, old = ms.get("dense"), ms.get("hashed-old")
        r_dense = f"{t / dense:.2f}" if dense else "—"
        r_old = f"{t / old:.2f}" if old else "—"
        lines.append(f"| {impl} | {t:.3g} | {r_dense} | {r_old} |")
    return "\n".join(lines) + "\n"


def render(path: Path) -> str:
    times, memory, info = load(path)
    mach = info["machine"]
    cpu = mach.get("cpu", {})
    ver = info.get("versions", {})
    parts = [
        stamp(info["commit"], info["date"]),
        f"Machine: {cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} logical cores "
        f"(shared with other jobs), Python {mach.get('python_version', '?')}, torch "
        f"{ver.get('torch', '?')} ({info.get('threads')} intra-op thread(s)), numpy "
        f"{ver.get('numpy', '?')}, scipy {ver.get('scipy', '?')}. Median milliseconds per call; "
        "ratios use baselines of the same run.\n",
        "### Goals\n",
        goals(times, memory, info["ragged"]),
    ]
    if info["ragged"]:
        scale = info.get("ragged_scale", "?")
        parts.append(f"### prox_many of ResNet-50's 54 weight shapes, channels ÷ {scale} (ms)\n")
        parts.append(ragged_table(info["ragged"]))
    for dtype in ("float32", "float64"):
        for kind in ("random", "chain"):
            if any(k[0] == dtype and k[1] == kind for k in times):
                parts.append(f"### {dtype}, {kind} input (ms)\n")
                parts.append(time_table(times, dtype, kind))
    if hashed := hashed_table(path):
        parts.append(hashed)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (bench.json)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    text = render(args.json)
    sys.stdout.write(text)
    if not args.no_write:
        SNIPPET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
