"""The protocol every experiment follows: presets and their per-data-set overrides, the
tune-then-seeds loop, the summary header, and per-parameter WSR strengths.

An experiment names its *arms* (what is compared, e.g. ``("fc_wsr", "shuffled")``) and, per arm,
a grid of *values* (a strength, a learning rate, or a tuple of them). :func:`tune` trains every
arm at every value on the tuning seeds and keeps, per arm, the value with the best validation
accuracy (ties to the stronger regulariser); :func:`over_seeds` trains the chosen value of every
arm on every seed. Both go through one :class:`Runs` cache, so a run the two share (same arm,
value and seed, same data) is trained once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._common import Context, markdown_table, progress, require
from ._stamp import current_commit, today
from .data import Split, load

Train = Callable[[Any, Any, int], dict[str, Any]]  # (arm, value, seed) -> result with "val_acc"


def presets(common: Mapping[str, Any], **per_preset: Mapping[str, Any]) -> dict[str, dict]:
    """``{preset: {**common, **overrides}}`` for each preset given as a keyword argument."""
    return {name: {**common, **over} for name, over in per_preset.items()}


def config_for(
    configs: Mapping[str, Mapping[str, Any]],
    preset: str,
    dataset: str,
    overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The preset's configuration with the data set's overrides for that preset on top."""
    return {**configs[preset], **(overrides or {}).get(dataset, {}).get(preset, {})}


def summary_header(ctx: Context, split_sizes: Mapping[str, int], cfg: Mapping[str, Any]) -> dict:
    """The entries every ``summary.json`` starts with: what ran, on what, where."""
    return {
        "experiment": ctx.name,
        "preset": ctx.preset,
        "dataset": ctx.dataset,
        "split_sizes": dict(split_sizes),
        "seeds": ctx.seeds,
        "config": dict(cfg),
        "device": str(ctx.device),
        "torch": torch.__version__,
        "measured_at": measured_at(),
        **({"journal": ctx.journal.report()} if ctx.journal else {}),
    }


def measured_at() -> dict[str, str | None]:
    """The commit (``-dirty`` with changes outside the generated tables; ``None`` without git)
    and the UTC date a run was measured at, for ``summary.json`` and the claims table's stamp
    (EXP-63)."""
    return {"commit": current_commit(), "date": today()}


class Runs:
    """Results by ``(arm, value, seed)``, each trained once, in the order they were first asked.

    ``scope`` names what ``train`` computes, so that the context's journal (EXP-64) can tell
    runs of two ``Runs`` apart: each ``Runs`` of one context needs its own scope. A run the
    journal holds from an earlier sitting is reused, not trained again.
    """

    def __init__(self, train: Train, ctx: Context, scope: str = "") -> None:
        if scope in ctx.scopes:
            raise ValueError(f"Runs scope {scope!r} is already used in this experiment")
        ctx.scopes.add(scope)
        self.train, self.ctx, self.scope = train, ctx, scope
        self.results: dict[tuple[Any, Any, int], dict[str, Any]] = {}

    def __call__(self, arm: Hashable, value: Hashable, seed: int) -> dict[str, Any]:
        key = (arm, value, seed)
        if key not in self.results:
            journal = self.ctx.journal
            result = journal.get(self.scope, arm, value, seed) if journal else None
            if result is None:
                result = self.train(arm, value, seed)
                if journal:
                    journal.put(self.scope, arm, value, seed, result)
            self.results[key] = result
        return self.results[key]

    def all(self, jobs: Iterable[tuple[Any, Any, int]], desc: str) -> None:
        for job in progress(list(jobs), self.ctx, desc):
            self(*job)


def _score(values: Iterable[float]) -> float:
    # rounded, so that equal accuracies summed in another order still tie
    return round(float(np.mean(list(values))), 10)


def split_by_seed(ctx: Context, first: Split, seeded: Sequence[str]) -> Callable[[int], Split]:
    """``data(seed)``: the seed's own split (its validation slice) for the data sets in
    ``seeded`` (``mnist5k``: EXP-6), the one split ``first`` (seed 0) for the others."""
    splits = {0: first}

    def data(seed: int) -> Split:
        key = seed if ctx.dataset in seeded else 0
        if key not in splits:
            splits[key] = load(ctx.dataset, None, key).to(ctx.device)
        return splits[key]

    return data


def grid_table(grid: Sequence[Mapping[str, Any]], tuning_seeds: int, value: str) -> str:
    """The tuning grid of a ``(model, setting)`` experiment: validation mean ± std per value."""
    rows = [
        [
            f"`{g['arm'][0]}`",
            g["arm"][1],
            ", ".join(f"{v:g}" for v in np.atleast_1d(g["value"])),
            f"{100 * g['val_mean']:.1f} ± {100 * g['val_std']:.1f}",
        ]
        for g in grid
    ]
    return (
        f"\nTuning grid (validation accuracy, mean ± std over {tuning_seeds} tuning seeds):\n\n"
        + markdown_table(["model", "setting", value, "val (%)"], rows)
    )


def choose(grid: Sequence[Any], score: Callable[[Any], float], tie: str = "larger") -> Any:
    """The grid value with the highest ``score``; ties go to the ``"larger"`` value (the stronger
    regulariser) or the ``"smaller"`` one (the smaller learning rate)."""
    if tie not in ("larger", "smaller"):
        raise ValueError(f"tie must be 'larger' or 'smaller', got {tie!r}")
    scores = {v: score(v) for v in grid}
    best = max(scores.values())
    tied = [v for v in grid if scores[v] == best]
    return max(tied) if tie == "larger" else min(tied)


def tune(
    runs: Runs,
    grids: Mapping[Any, Sequence[Any]],
    seeds: Sequence[int],
    desc: str,
    tie: str = "larger",
) -> dict[Any, Any]:
    """Train every arm at every grid value on ``seeds``; per arm, the value of the best mean
    validation accuracy over those seeds (see :func:`choose` for ties)."""
    runs.all(((a, v, s) for a, grid in grids.items() for v in grid for s in seeds), desc)
    return {
        arm: choose(grid, lambda v, a=arm: _score(runs(a, v, s)["val_acc"] for s in seeds), tie)
        for arm, grid in grids.items()
    }


def over_seeds(
    runs: Runs, chosen: Mapping[Any, Any], seeds: int, desc: str
) -> dict[Any, list[dict[str, Any]]]:
    """Every arm at its chosen value on seeds ``0 .. seeds-1`` (runs already made are reused)."""
    runs.all(((a, v, s) for a, v in chosen.items() for s in range(seeds)), desc)
    return {a: [runs(a, v, s) for s in range(seeds)] for a, v in chosen.items()}


def own_groups(model: nn.Module, params: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Param groups with each of ``params`` alone in its group, then one group with the rest,
    so that each of ``params`` can carry its own WSR strength (:func:`attach_strengths`)."""
    rest = [p for p in model.parameters() if all(p is not q for q in params)]
    return [{"params": [p]} for p in params] + [{"params": rest}]


def attach_strengths(
    optimizer: torch.optim.Optimizer,
    lams: Mapping[torch.Tensor, float],
    l1: float = 0.0,
) -> Any:
    """``weightshare.attach`` with a WSR strength per parameter (``lams[p]``), the same ``l1``."""
    ws = require("weightshare", "attach", experiment="protocol")
    return ws.attach(optimizer, dict(lams), l1=l1)


# --- the verdict rule ---------------------------------------------------------------------------

#: the rule every page states before its numbers
VERDICT_RULE = (
    "For each claim, the difference method − control is taken per seed (both trained on the same "
    "seed: same split, initialisation and batch order), and its mean and two-sided 95 % "
    "t-interval over the seeds are reported. The claim is *reproduced* when the interval "
    "excludes 0 in the claimed direction, *not reproduced* when it excludes 0 in the other "
    "direction, and *inconclusive* otherwise. A claim whose comparison includes a diverged run "
    "(loss NaN/inf, or accuracy at chance) is judged *diverged* instead: a run that did not "
    "train is not evidence of a difference."
)

#: a run whose test accuracy is at most chance (1 / classes) + this margin stayed at chance
CHANCE_MARGIN = 0.02


def is_diverged(run: Mapping[str, Any], classes: int = 10) -> bool:
    """Whether a run did not train: it says so (``diverged``), its training loss is NaN/inf, or
    its test accuracy stayed at chance (at most ``1 / classes + CHANCE_MARGIN``)."""
    if run.get("diverged"):
        return True
    if "train_loss" in run:  # null in JSON is a NaN loss
        loss = run["train_loss"]
        if loss is None or not np.isfinite(float(loss)):
            return True
    acc = run.get("test_acc")
    return acc is not None and float(acc) <= 1.0 / classes + CHANCE_MARGIN


def diverged_verdict(method: str, control: str, n_method: int, n_control: int, n: int) -> str:
    """``"diverged: ..."`` naming the side(s) and how many of the ``n`` seeds diverged."""
    sides = ((method, n_method), (control, n_control))
    return "diverged: " + ", ".join(f"`{name}` {k} of {n} seeds" for name, k in sides if k)


def paired(method: Sequence[float], control: Sequence[float], level: float = 0.95) -> dict:
    """Mean of the per-seed differences ``method[i] - control[i]`` and its two-sided t-interval.

    ``std`` is the sample standard deviation (ddof = 1) of the differences; with fewer than two
    seeds the interval is undefined (NaN, so ``null`` in ``summary.json``).
    """
    from scipy.stats import t as student_t

    if len(method) != len(control):
        raise ValueError(
            f"paired needs as many values per side, got {len(method)} and {len(control)}"
        )
    d = np.asarray(method, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        std = low = high = float("nan")
    else:
        std = float(d.std(ddof=1))
        half = float(student_t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
        low, high = float(mean - half), float(mean + half)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "low": low,
        "high": high,
        "level": level,
        "differences": [float(v) for v in d],
    }


def verdict(interval: Mapping[str, float], direction: str = ">") -> str:
    """*reproduced* / *not reproduced* / *inconclusive* for the claim ``method <direction>
    control`` (``">"`` or ``"<"``) from a :func:`paired` interval (see :data:`VERDICT_RULE`)."""
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    low, high = interval["low"], interval["high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    above, below = low > 0, high < 0
    if (above and direction == ">") or (below and direction == "<"):
        return "reproduced"
    if above or below:
        return "not reproduced"
    return "inconclusive"


def claim(
    text: str,
    method: str,
    control: str,
    method_values: Sequence[float],
    control_values: Sequence[float],
    direction: str = ">",
    scale: float = 100.0,
    diverged: tuple[Sequence[bool], Sequence[bool]] = ((), ()),
) -> dict[str, Any]:
    """One claim of a page: the paired interval (in units of ``scale``, percentage points for
    accuracies) and its verdict; ``diverged`` gives, per side, which seeds' runs diverged
    (:func:`is_diverged`), and any such run makes the verdict ``"diverged: ..."``."""
    interval = paired([scale * v for v in method_values], [scale * v for v in control_values])
    n_method, n_control = sum(map(bool, diverged[0])), sum(map(bool, diverged[1]))
    judged = verdict(interval, direction)
    if n_method or n_control:
        judged = diverged_verdict(method, control, n_method, n_control, interval["n"])
    return {
        "claim": text,
        "method": method,
        "control": control,
        "direction": direction,
        "paired": interval,
        "diverged": {"method": n_method, "control": n_control},
        "verdict": judged,
    }


def grid_record(runs: Runs, grids: Mapping[Any, Sequence[Any]], seeds: Sequence[int]) -> list:
    """Every tuning point: the arm, the value, and the validation accuracy per tuning seed with
    its mean and std (ddof = 0), for ``summary.json``."""
    out = []
    for arm, grid in grids.items():
        for v in grid:
            vals = [runs(arm, v, s)["val_acc"] for s in seeds]
            out.append(
                {
                    "arm": list(arm) if isinstance(arm, tuple) else arm,
                    "value": list(v) if isinstance(v, tuple) else v,
                    "val_mean": float(np.mean(vals)),
                    "val_std": float(np.std(vals)),
                    "val": vals,
                }
            )
    return out


def claims_table(claims: Sequence[Mapping[str, Any]], unit: str = "points") -> str:
    """The paired table of a page: claim, comparison, mean difference, 95 % interval, verdict."""
    rows = []
    for c in claims:
        p = c["paired"]
        ci = "–" if not np.isfinite(p["low"]) else f"[{p['low']:+.2f}, {p['high']:+.2f}]"
        rows.append(
            [
                c["claim"],
                f"`{c['method']}` {c['direction']} `{c['control']}`",
                p["n"],
                f"{p['mean']:+.2f}" if p["n"] else "–",
                ci,
                f"**{c['verdict']}**",
            ]
        )
    header = ["claim", "comparison", "seeds", f"mean difference ({unit})", "95 % interval"]
    return markdown_table([*header, "verdict"], rows)
