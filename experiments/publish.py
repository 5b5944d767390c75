"""Copy a finished full run into the spec site: ``python -m experiments.publish RUN_DIR NAME``.

``RUN_DIR`` is an experiment's output folder (``results/<name>``); its ``table.md`` becomes
``spec/_snippets/experiments/<NAME>.md`` and its PNGs ``spec/experiments/assets/<NAME>/``; its
``summary.json`` is copied next to the figures so the page's numbers can be traced. The claims
table of the experiments index (``spec/_snippets/experiments/claims.md``) is then rebuilt from
every published ``summary.json`` that has paired claims (EXP-7).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

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
    written.append(write_claims_index())
    return written


def claims_index() -> str:
    """One row per paired claim of every published full run: claim, data, seeds, mean
    difference, 95 % interval, verdict (read from the committed ``summary.json`` files)."""
    rows = []
    for path in sorted(ASSETS.glob("*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(summary.get("claims"), list) or summary.get("preset") != "full":
            continue
        for c in summary["claims"]:
            p = c["paired"]
            ci = "–" if p["low"] is None else f"[{p['low']:+.2f}, {p['high']:+.2f}]"
            mean = "–" if p["mean"] is None else f"{p['mean']:+.2f}"
            rows.append(
                [
                    f"{summary['experiment']}: {c['claim']}",
                    summary["dataset"],
                    f"{p['n']} (tuning {summary['tuning_seeds']})",
                    mean,
                    ci,
                    f"**{c['verdict']}**" + (f" ({c['note']})" if c.get("note") else ""),
                ]
            )
    header = ["claim", "data", "seeds", "mean difference (points)", "95 % interval", "verdict"]
    return markdown_table(header, rows)


def write_claims_index() -> Path:
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    path = SNIPPETS / "claims.md"
    path.write_text(claims_index(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.publish", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("name")
    args = p.parse_args(argv)
    for path in publish(args.run_dir, args.name):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
