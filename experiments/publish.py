"""Copy a finished full run into the spec site: ``python -m experiments publish [RUN_DIR NAME]``.

``RUN_DIR`` is an experiment's output folder (``results/<name>``); its ``table.md`` becomes
``spec/_snippets/experiments/<NAME>.md`` and its PNGs ``spec/experiments/assets/<NAME>/``; its
``summary.json`` is copied next to the figures so the page's numbers can be traced. The claims
table of the experiments index (``spec/_snippets/experiments/claims.md``) is then rebuilt from
every published ``summary.json`` that has paired claims (EXP-7), judged by the divergence rule
(EXP-61), with its forest plot (EXP-62); without arguments only the index is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from . import factorization, plotting, protocol
from ._common import markdown_table

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "spec" / "_snippets" / "experiments"
ASSETS = ROOT / "spec" / "experiments" / "assets"
MAX_PNG_BYTES = 150_000


def publish(run_dir: Path, name: str) -> list[Path]:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if summary.get("preset") != "full":
        raise SystemExit(f"{run_dir} holds a {summary.get('preset')!r} run; publish full runs only")
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    target = ASSETS / name
    target.mkdir(parents=True, exist_ok=True)
    written = [SNIPPETS / f"{name}.md", target / "summary.json"]
    shutil.copyfile(run_dir / "table.md", written[0])
    shutil.copyfile(run_dir / "summary.json", written[1])
    for png in sorted(run_dir.glob("*.png")):
        if png.stat().st_size > MAX_PNG_BYTES:
            raise SystemExit(f"{png} is {png.stat().st_size} bytes (> {MAX_PNG_BYTES})")
        written.append(Path(shutil.copy2(png, target / png.name)))
    return written + write_claims_index()


#: the paper each experiment re-tests, in the order of the index
PAPERS = {
    "shuffled-pixels": "WSR (Shakerinava et al. 2024)",
    "arbnets": "ArbNets / HashedNets (Chang & Lipson)",
    "factorization": "DWF (Kolb et al. 2025)",
    "symmetry": "Hu et al. (CVIU 2019)",
}
FOREST = ASSETS / "claims-forest.png"


def _claim_runs(summary: dict[str, Any], c: dict[str, Any]) -> tuple[list, list] | None:
    """The per-seed runs of a claim's method and control, from a committed summary, or
    ``None`` where the summary does not hold them."""
    name = summary["experiment"]
    if name == "arbnets":
        for st in summary.get("settings", []):
            if any(o["claim"] == c["claim"] for o in st["claims"]):
                v = st["variants"]
                return v[c["method"]]["runs"], v[c["control"]]["runs"]
    if name == "factorization" and "picks" in summary:
        final = factorization.final_runs(summary)
        t = summary["config"]["claim_target"]
        return final.get((c["method"], t), []), final.get((c["control"], t), [])
    if name == "shuffled-pixels" and "models" in summary:
        setting = "shuffled" if "shuffled" in c["claim"] else "original"
        m = summary["models"]
        return m[c["method"]][setting]["runs"], m[c["control"]][setting]["runs"]
    return None


def judged(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's claims with the divergence rule applied from its per-seed runs (EXP-61):
    a claim whose comparison includes a diverged run gets the verdict ``"diverged: ..."``."""
    out = []
    for c in summary["claims"]:
        c = dict(c)
        runs = _claim_runs(summary, c)
        if runs is None:
            c["note"] = "; ".join(filter(None, [c.get("note"), "per-seed runs not recorded"]))
        else:
            n = c["paired"]["n"]
            k = [sum(protocol.is_diverged(r) for r in side[:n]) for side in runs]
            c["diverged"] = {"method": k[0], "control": k[1]}
            if any(k):
                c["verdict"] = protocol.diverged_verdict(c["method"], c["control"], *k, n)
        out.append(c)
    return out


def _published() -> list[dict[str, Any]]:
    """Every published full run with paired claims, by paper then name."""
    out = []
    for path in sorted(ASSETS.glob("*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(summary.get("claims"), list) and summary.get("preset") == "full":
            out.append(summary)
    order = list(PAPERS)
    return sorted(out, key=lambda s: order.index(s["experiment"]))


def _measured(summary: dict[str, Any]) -> str:
    at = summary.get("measured_at") or {}
    return f"commit {at.get('commit') or 'not recorded'} on {at.get('date') or 'not recorded'}"


def claims_index() -> str:
    """Per paper, one row per paired claim of every published full run: claim, data, seeds,
    mean difference, 95 % interval, verdict (read from the committed ``summary.json`` files and
    judged by the divergence rule); then the diverged runs per variant and when each run was
    measured."""
    by_paper: dict[str, list[list[Any]]] = {}
    stamps, dead = [], []
    for summary in _published():
        stamps.append([summary["experiment"], summary["dataset"], _measured(summary)])
        for c in judged(summary):
            p = c["paired"]
            ci = "–" if p["low"] is None else f"[{p['low']:+.2f}, {p['high']:+.2f}]"
            mean = "–" if p["mean"] is None else f"{p['mean']:+.2f}"
            by_paper.setdefault(PAPERS[summary["experiment"]], []).append(
                [
                    f"{summary['experiment']}: {c['claim']}",
                    summary["dataset"],
                    f"{p['n']} (tuning {summary['tuning_seeds']})",
                    mean,
                    ci,
                    f"**{c['verdict']}**" + (f" ({c['note']})" if c.get("note") else ""),
                ]
            )
        for variant, flags in _variant_runs(summary).items():
            if any(flags):
                dead.append(
                    [
                        summary["experiment"],
                        summary["dataset"],
                        variant,
                        f"{sum(flags)} of {len(flags)}",
                    ]
                )
    header = ["claim", "data", "seeds", "mean difference (points)", "95 % interval", "verdict"]
    parts = [f"#### {paper}\n\n" + markdown_table(header, rows) for paper, rows in by_paper.items()]
    parts.append(
        "#### Diverged runs per variant\n\nA run diverged when its loss became NaN/inf or its "
        "test accuracy stayed at chance (EXP-61); variants not listed have none.\n\n"
        + markdown_table(["experiment", "data", "variant", "diverged seeds"], dead)
    )
    parts.append(
        "#### Measured at\n\nThe commit and date each run records (EXP-63); runs published "
        "before EXP-63 did not record them.\n\n"
        + markdown_table(["experiment", "data", "measured at (from summary.json)"], stamps)
    )
    return "\n".join(parts)


def _variant_runs(summary: dict[str, Any]) -> dict[str, list[bool]]:
    """Per variant (``setting: variant``), the diverged flag of each of its final runs."""
    out: dict[str, list[bool]] = {}
    if summary["experiment"] == "arbnets":
        for st in summary.get("settings", []):
            name = f"{'-'.join(map(str, st['hidden']))} at 1/{round(1 / st['compression'])}"
            for label, v in st["variants"].items():
                out[f"{name}: {label}"] = [protocol.is_diverged(r) for r in v["runs"]]
    elif summary["experiment"] == "factorization" and "picks" in summary:
        for (m, t), rs in factorization.final_runs(summary).items():
            out[f"{m} @ CR ≥ {t}"] = [protocol.is_diverged(r) for r in rs]
    elif "models" in summary:
        for model, settings in summary["models"].items():
            for setting, v in settings.items():
                if isinstance(v, dict) and "runs" in v:
                    out[f"{model} ({setting})"] = [protocol.is_diverged(r) for r in v["runs"]]
    return out


def forest_plot(path: Path = FOREST) -> Path:
    """The forest plot of every claim of :func:`claims_index`, grouped by paper."""
    groups: dict[str, list[tuple[str, float, float, float, str]]] = {}
    for summary in _published():
        for c in judged(summary):
            p = c["paired"]
            nan = float("nan")
            groups.setdefault(PAPERS[summary["experiment"]], []).append(
                (
                    f"{c['claim']} [{summary['dataset']}]",
                    nan if p["mean"] is None else p["mean"],
                    nan if p["low"] is None else p["low"],
                    nan if p["high"] is None else p["high"],
                    c["verdict"],
                )
            )
    return plotting.forest(groups, path)


def refresh_tables() -> list[Path]:
    """Rewrite the page table of every published DWF protocol run from its ``summary.json``,
    with the divergence rule applied (per-seed CRs, ``diverged: ...`` verdicts)."""
    written = []
    for path in sorted(ASSETS.glob("*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        out = SNIPPETS / f"{path.parent.name}.md"
        if not isinstance(summary.get("claims"), list) or not out.exists():
            continue
        if summary.get("experiment") == "factorization" and "picks" in summary:
            table = factorization.protocol_table({**summary, "claims": judged(summary)})
        else:
            table = _rejudge_rows(out.read_text(encoding="utf-8"), judged(summary))
        if table != out.read_text(encoding="utf-8"):
            out.write_text(table, encoding="utf-8")
            written.append(out)
    return written


def _rejudge_rows(table: str, claims: list[dict[str, Any]]) -> str:
    """The page table with the verdict cell of each claim's row set to its judged verdict."""
    verdicts = {f"| {c['claim']} |": c["verdict"] for c in claims}
    lines = []
    for line in table.splitlines(keepends=True):
        start = line[: line.find(" |", 2) + 2] if line.startswith("| ") else ""
        if start in verdicts and line.rstrip().endswith("** |"):
            head = line[: line.rstrip().rindex("| **") + 2]
            line = f"{head}**{verdicts[start]}** |\n"
        lines.append(line)
    return "".join(lines)


def write_claims_index() -> list[Path]:
    """The claims table, the forest plot and the refreshed DWF tables (EXP-61, EXP-62)."""
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    path = SNIPPETS / "claims.md"
    path.write_text(claims_index(), encoding="utf-8")
    return [path, forest_plot(), *refresh_tables()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.publish", description=__doc__)
    p.add_argument("run_dir", type=Path, nargs="?", help="a finished full run (none: rebuild only)")
    p.add_argument("name", nargs="?")
    args = p.parse_args(argv)
    if (args.run_dir is None) != (args.name is None):
        p.error("give both RUN_DIR and NAME, or neither (to rebuild the index only)")
    written = write_claims_index() if args.run_dir is None else publish(args.run_dir, args.name)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
