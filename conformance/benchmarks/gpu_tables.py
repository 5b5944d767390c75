"""The GPU check's tables (``gpu_bench.md``) from the benchmarks' JSON files; no torch needed.

``render_prox`` is the prox table of ``gpu.py``; ``render_train`` the training table of
``gpu_train.py``; :func:`write` renders whichever of ``gpu_bench.json`` and ``gpu_train.json`` the
output folder holds (the GPU check calls it after each benchmark part, also after a kill).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the stages of one "triton" prox, in pipeline order ("partition" only for ragged lists)
STAGES = ("sort", "partition", "tiles", "merges", "slopes")

#: (row, measured, baseline, goal): the training benchmark's ratios and the goals they answer
TRAIN_ROWS = (
    ("ResNet-50 step with `ws.attach` / without", "step attach", "step", "≤ 1.10"),
    ("`prox_many` of the 54 weights / one sort of their concatenation", "prox_many",
     "sort concat", "≤ 2.5"),
    ("`prox_many` of the 54 weights / sorting each", "prox_many", "sort each", ""),
    ("one sort of the concatenation / sorting each", "sort concat", "sort each", ""),
    ("`HashedLinear` fwd+bwd / `nn.Linear`", "hashed", "linear", "≤ 2"),
)  # fmt: skip


def _head(meta: dict[str, Any]) -> str:
    return (
        f"Device: {meta.get('device')}, torch {meta.get('torch')}, triton {meta.get('triton')}\n\n"
    )


def _ratio(records: list[dict], case: str, dtype: str, kind: str, num: str, den: str) -> float:
    ms = {r["what"]: r["ms"] for r in records
          if r.get("case") == case and r["dtype"] == dtype and r.get("input") == kind}  # fmt: skip
    return ms[num] / ms[den] if num in ms and den in ms else float("nan")


def render(records: list[dict]) -> str:
    """Markdown: one row per prox case with the times and the ratios the goals name."""
    lines = [
        "| case | dtype | input | sort ms | triton ms | triton / sort | hull / triton "
        "| search / triton |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    seen = []
    for r in records:
        key = (r["case"], r["dtype"], r.get("input"))
        if "ms" not in r or key in seen or r["case"].startswith("stages"):
            continue
        seen.append(key)
        case, dtype, kind = key
        ms = {x["what"]: x["ms"] for x in records
              if (x["case"], x["dtype"], x.get("input")) == key}  # fmt: skip
        cells = [
            f"{ms.get('sort', float('nan')):.3f}",
            f"{ms.get('triton', float('nan')):.3f}",
            f"{_ratio(records, case, dtype, kind, 'triton', 'sort'):.2f}",
            f"{_ratio(records, case, dtype, kind, 'hull', 'triton'):.1f}",
            f"{_ratio(records, case, dtype, kind, 'search', 'triton'):.1f}",
        ]
        head = f"| {case} | {dtype.removeprefix('torch.')} | {kind} | "
        lines.append(head + " | ".join(cells) + " |")
    lines += _render_stages(records)
    for r in records:
        if "peak_extra_over_input" in r:
            lines.append(f"\nPeak extra memory, {r['case']} float32: "
                         f"{r['peak_extra_over_input']:.2f}x the input's bytes.")  # fmt: skip
    lines.extend(_hashed_lines(records))
    return "\n".join(lines) + "\n"


def _render_stages(records: list[dict]) -> list[str]:
    """Markdown lines: milliseconds per stage of one "triton" prox (sum of the stages too)."""
    cases: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        if "ms" in r and r["case"].startswith("stages"):
            cases.setdefault((r["case"], r["dtype"]), {})[r["what"]] = r["ms"]
    if not cases:
        return []
    lines = ["", "| stages | dtype | " + " | ".join(STAGES) + " | sum / sort |",
             "| --- | --- |" + " ---: |" * (len(STAGES) + 1)]  # fmt: skip
    for (case, dtype), ms in cases.items():
        cells = [f"{ms[s]:.3f}" if s in ms else "—" for s in STAGES]
        ratio = sum(ms.values()) / ms["sort"] if "sort" in ms else float("nan")
        lines.append(f"| {case.removeprefix('stages ')} | {dtype.removeprefix('torch.')} | "
                     + " | ".join(cells) + f" | {ratio:.2f} |")  # fmt: skip
    return lines


def _hashed_lines(records: list[dict]) -> list[str]:
    """The hashed-layer rows (goal: hashed / dense <= 2)."""
    out = []
    for r in records:
        if "hashed_ms" in r:
            ms = r["hashed_ms"]
            out.append(
                f"\n{r['case']}: dense {ms['dense']:.3f} ms, hashed {ms['hashed']:.3f} ms "
                f"({r['hashed_over_dense']:.2f}x dense; goal <= 2), before HASH-19 "
                f"{ms['hashed-old']:.3f} ms ({r['old_over_dense']:.2f}x dense)."
            )
    return out


def render_prox(meta: dict[str, Any], records: list[dict]) -> str:
    return _head(meta) + render(records)


def render_train(meta: dict[str, Any], records: list[dict]) -> str:
    """The training benchmark: its setting, then one row per ratio (blank where not measured)."""
    ms = {r["what"]: r["ms"] for r in records if "ms" in r}
    setting = next((r for r in records if r.get("what") == "setting"), {})
    lines = [
        f"Training: {setting.get('model', '?')}, batch {setting.get('batch', '?')}, "
        f"{setting.get('precision', '?')}, SGD momentum; {setting.get('attached', '?')} weights "
        f"attached ({setting.get('values', '?')} values); hashed layer "
        f"{setting.get('hashed', '?')}.",
        "",
        "| ratio | ms | baseline ms | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, num, den, goal in TRAIN_ROWS:
        if num in ms and den in ms:
            lines.append(f"| {label} | {ms[num]:.3f} | {ms[den]:.3f} | "
                         f"{ms[num] / ms[den]:.2f} | {goal} |")  # fmt: skip
        else:
            lines.append(f"| {label} | not measured | | | {goal} |")
    return "\n".join(lines) + "\n"


def write(out: Path) -> None:
    """``gpu_bench.md`` from the JSON files in ``out`` (skips a file that is not there yet)."""
    parts: list[str] = []
    for name, render_one in (("gpu_bench.json", render_prox), ("gpu_train.json", render_train)):
        path = out / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            parts.append(f"`{name}` is not readable JSON ({e}).\n")
            continue
        parts.append(render_one(data.get("meta", {}), data.get("records", [])))
    if parts:
        (out / "gpu_bench.md").write_text("\n".join(parts), encoding="utf-8")
