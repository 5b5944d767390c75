"""Small PNG figures (matplotlib, Agg backend, low dpi so committed figures stay small)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

DPI = 80


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def unit_grid(
    panels: Mapping[str, torch.Tensor],
    image_shape: tuple[int, int, int],
    path: Path,
    units: int = 16,
    per_row: int = 5,
) -> Path:
    """One panel per entry: the first ``units`` rows of a first-layer matrix shown as images.

    Each unit is min-max normalised on its own (as in the official WSR plots); channels are
    averaged for colour inputs.
    """
    c, h, w = image_shape
    cols = int(np.ceil(np.sqrt(units)))
    rows = int(np.ceil(units / cols))
    ncols = min(len(panels), per_row)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, weight) in zip(axes.flat, panels.items(), strict=False):
        imgs = weight.detach().cpu().double().reshape(-1, c, h, w).mean(1)[:units].numpy()
        canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
        for k, img in enumerate(imgs):
            lo, hi = img.min(), img.max()
            norm = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            r, q = divmod(k, cols)
            canvas[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = norm
        ax.imshow(canvas, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return _save(fig, path)


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: Path,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Bars with error bars: ``series[name][i] = (mean, std)`` for ``groups[i]``."""
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, vals) in enumerate(series.items()):
        means = [v[0] for v in vals]
        stds = [v[1] for v in vals]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=stds, label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path: Path,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    connect: bool = True,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Points joined in x order (unjoined unless ``connect``): ``series[name] = (x, y, yerr)``;
    ``hlines[name] = y`` adds dashed reference lines."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for k, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, ls="--", lw=1, color=f"C{k + 5}", label=name)
    for name, (xs, ys, err) in series.items():
        order = np.argsort(np.asarray(xs, dtype=float), kind="stable")
        xs, ys = [xs[i] for i in order], [ys[i] for i in order]
        err = None if err is None else [err[i] for i in order]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            marker="o",
            ms=3,
            lw=1,
            ls="-" if connect else "none",
            capsize=2,
            label=name,
        )
    return _finish(fig, ax, path, xlabel, ylabel, logx=logx)


def _finish(
    fig: plt.Figure,
    ax: plt.Axes,
    path: Path,
    xlabel: str,
    ylabel: str,
    *,
    logx: bool,
    legend_size: float = 7,
) -> Path:
    """Axis labels, legend and grid in the house style, then save."""
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled decades only
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def heatmaps(panels: Mapping[str, torch.Tensor], path: Path) -> Path:
    """First-layer matrices as heat maps, one panel each: rows (units) sorted by the position of
    their largest median-centred weight, each row scaled to its own maximum magnitude."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 3.2), squeeze=False)
    for ax, (title, weight) in zip(axes.flat, panels.items(), strict=True):
        w = weight.detach().cpu().double()
        w = w - w.median(dim=1, keepdim=True).values
        scale = w.abs().max(dim=1, keepdim=True).values
        w = torch.where(scale > 0, w / scale.clamp_min(1e-300), torch.zeros_like(w))
        order = torch.argsort(w.abs().argmax(1), stable=True)
        ax.imshow(
            w[order].numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest"
        )
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("input position", fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].set_ylabel("unit (sorted by peak)", fontsize=7)
    return _save(fig, path)


def value_histogram(panels: Mapping[str, torch.Tensor], path: Path, bins: int = 200) -> Path:
    """Histograms (log counts) of the values of each weight matrix: shared values are spikes."""
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    for name, weight in panels.items():
        vals = weight.detach().cpu().double().flatten().numpy()
        ax.hist(vals, bins=bins, histtype="step", log=True, label=name)
    ax.set_xlabel("first-layer weight value", fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    return _save(fig, path)


def bands(
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Lines with ± std bands over a log x axis: ``series[name] = [(x, mean, std), ...]``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.3))
    for k, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        if not pts:
            continue
        xs, ys, sd = (np.asarray(v, dtype=float) for v in zip(*pts, strict=True))
        ls = "--" if "pruning" in name else "-"
        ax.plot(xs, ys, marker="o", ms=2.5, lw=1, ls=ls, color=f"C{k}", label=name)
        ax.fill_between(xs, ys - sd, ys + sd, color=f"C{k}", alpha=0.18, lw=0)
    return _finish(fig, ax, path, xlabel, ylabel, logx=True, legend_size=6.5)


#: verdict colours of the forest plot (a verdict "diverged: ..." takes the last one)
VERDICT_COLOURS = {
    "reproduced": "tab:green",
    "not reproduced": "tab:red",
    "inconclusive": "tab:gray",
    "diverged": "tab:orange",
}


Claim = tuple[str, float, float, float, str]  # label, mean, low, high, verdict


def forest(groups: Mapping[str, Sequence[Claim]], path: Path) -> Path:
    """One row per claim ``(label, mean, low, high, verdict)``, grouped (a heading per group),
    coloured by verdict, with the zero line; deterministic bytes (no date, no software tag)."""
    rows = sum(len(g) + 1 for g in groups.values())
    fig, ax = plt.subplots(figsize=(9.0, 0.22 * rows + 1.0))
    y, ticks, labels = 0, [], []
    for group, claims in groups.items():
        ticks.append(y)
        labels.append(group)
        y -= 1
        for label, mean, low, high, verdict in claims:
            colour = VERDICT_COLOURS[verdict.split(":")[0]]
            if np.isfinite(low) and np.isfinite(high):
                ax.plot([low, high], [y, y], color=colour, lw=2)
            ax.plot([mean], [y], "o", color=colour, ms=4)
            ticks.append(y)
            labels.append(label)
            y -= 1
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=6)
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        if label in groups:
            tick.set_fontweight("bold")
    ax.set_xlabel("paired difference method − control (points), mean and 95 % interval")
    ax.set_ylim(y + 0.5, 0.5)
    for name, colour in VERDICT_COLOURS.items():
        ax.plot([], [], "o-", color=colour, label=name)
    ax.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    ax.grid(axis="x", lw=0.3)
    return _save(fig, path)
