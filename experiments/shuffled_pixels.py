"""WSR headline: an FC net with the weight-sharing prox (``fc_wsr``) vs the plain FC net (``fc``),
an l1-prox control (``fc_l1``) and a CNN, on original and pixel-shuffled images, with a
quantitative conv-likeness score of the first layer.

Data sets: ``mnist1d`` (default; the MNIST-1D reference models and training, see
:mod:`experiments.shuffled_1d`), ``digits`` (``fc`` = MLP 64-256-10, ``cnn`` = its twin with a
3x3 conv of 4 channels as first layer), ``digits-torus`` and ``mnist-torus`` (the official
``Net_2FC`` vs ``Net_2CNN`` on circularly shifted images) and ``cifar10`` (Neyshabur's S-FC vs
S-Conv).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import metrics, plotting, protocol, shuffled_1d
from ._common import Context, fmt, markdown_table, require, write_results
from ._wsr import (
    MODELS,
    PERMUTATION_SEED,
    REGULARISED,
    SETTINGS,
    accuracy_series,
    claims,
    layer_stats,
    model_entry,
    regulariser_hook,
)
from .models import MLP, SFC, LocalCNN, Net2CNN, Net2FC, SConv, conv_as_matrix
from .protocol import Runs, over_seeds, own_groups, presets, summary_header, tune
from .train import TrainConfig, fit, sgd

FIGURE_UNITS_SEED = 777
SEEDED_SPLITS = ("mnist5k", "mnist5k-torus")  # data sets whose validation slice is per seed

# SGD without momentum, cosine schedule: the official WSR setting, where prox-SGD is exact.
_SGD = {"momentum": 0.0}
_SMOKE = {"epochs": 1, "batch_size": 128}
CONFIGS = presets(
    {**_SGD, "dataset": "mnist1d", "channels": 4},
    full={
        "seeds": 5,
        "epochs": 30,
        "batch_size": 32,
        "lr_grid": [0.1, 0.3],
        "lam_grid": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
        "l1_grid": [1e-4, 1e-3, 1e-2],
    },
    quick={
        "seeds": 2,
        "epochs": 20,
        "batch_size": 32,
        "lr_grid": [0.3],
        "lam_grid": [1e-3, 3e-3],
        "l1_grid": [1e-3],
    },
    smoke={
        **_SMOKE,
        "seeds": 1,
        "lr_grid": [0.3],
        "lam_grid": [1e-3],
        "l1_grid": [1e-3],
        "channels": 2,
    },
)

# Other data sets override the digits presets. mnist-torus and cifar10 are the official
# configurations (scripts/run_mnist_torus_14.sh, scripts/run_cifar10.sh; need --data-dir);
# digits-torus is ours: the torus protocol with the official models, on digits.
_ONE = {"lr_grid": [0.1], "lam_grid": [1e-3]}  # the official scripts' single setting
_TORUS = {**_SGD, "lam2_ratio": 0.1}
OFFICIAL: dict[str, dict[str, dict[str, Any]]] = {
    "digits-torus": presets(
        {**_TORUS, "l1_grid": [1e-3], "lr_grid": [0.3], "alpha1": 4, "alpha2": 8},
        full={"epochs": 30, "batch_size": 32, "lam_grid": [3e-4, 1e-3, 3e-3]},
        quick={"epochs": 20, "batch_size": 32, "lam_grid": [1e-3]},
        smoke={**_SMOKE, "lam_grid": [1e-3], "alpha1": 1, "alpha2": 2},
    ),
    "mnist-torus": presets(
        {**_TORUS, **_ONE, "batch_size": 512},
        full={"epochs": 200, "alpha1": 32, "alpha2": 64},
        quick={"epochs": 10, "alpha1": 4, "alpha2": 8},
        smoke={"epochs": 1, "alpha1": 1, "alpha2": 2},
    ),
    # ours: the official torus protocol on the 5,000 bundled digits, narrower (see the page)
    "mnist5k-torus": presets(
        {**_TORUS, **_ONE, "l1_grid": [1e-4, 1e-3]},
        full={
            "seeds": 5,
            "tuning_seeds": 3,
            "epochs": 8,
            "batch_size": 128,
            "lam_grid": [1e-3, 1e-2],
            "alpha1": 2,
            "alpha2": 4,
        },
        quick={
            "seeds": 2,
            "tuning_seeds": 1,
            "epochs": 3,
            "batch_size": 128,
            "l1_grid": [1e-3],
            "alpha1": 2,
            "alpha2": 4,
        },
        smoke={
            "seeds": 2,
            "tuning_seeds": 2,
            "epochs": 1,
            "batch_size": 512,
            "l1_grid": [1e-3],
            "alpha1": 1,
            "alpha2": 2,
        },
    ),
    "cifar10": presets(
        {**_SGD, **_ONE, "batch_size": 512},
        full={"epochs": 400, "channels": 64},
        quick={"epochs": 10, "channels": 8},
        smoke={"epochs": 1, "channels": 2},
    ),
}


@dataclass(frozen=True)
class Setup:
    """Per-data-set choices: model builders, the first layer's matrix and the locality window."""

    build: dict[str, Callable[[], nn.Module]]
    first_layer: Callable[[nn.Module], torch.Tensor]
    wsr_layers: Callable[[nn.Module], list[nn.Parameter]]
    window: int
    circular: bool
    #: templates of the shift-sharing score (the CNN's first-layer channels); None: not scored
    templates: int | None = None


def _setup(dataset: str, image_shape: tuple[int, int, int], cfg: dict[str, Any]) -> Setup:
    c, h, w = image_shape
    if dataset in ("mnist-torus", "digits-torus", "mnist5k-torus"):
        a1, a2 = cfg["alpha1"], cfg["alpha2"]

        def first(m: nn.Module) -> torch.Tensor:
            return conv_as_matrix(m.conv1, image_shape) if isinstance(m, Net2CNN) else m.fc1.weight

        return Setup(
            build={"fc": lambda: Net2FC(h, a1, a2), "cnn": lambda: Net2CNN(a1, a2)},
            first_layer=first,
            wsr_layers=lambda m: [m.fc1.weight, m.fc2.weight],
            window=3,
            circular=True,
            templates=a1 if dataset == "mnist5k-torus" else None,
        )
    if dataset == "cifar10":
        ch = cfg["channels"]

        def first(m: nn.Module) -> torch.Tensor:
            return conv_as_matrix(m.conv1, image_shape) if isinstance(m, SConv) else m.fc1.weight

        return Setup(
            build={"fc": lambda: SFC(ch), "cnn": lambda: SConv(ch)},
            first_layer=first,
            wsr_layers=lambda m: [m.fc1.weight],
            window=9,
            circular=False,
        )
    ch = cfg["channels"]

    def first(m: nn.Module) -> torch.Tensor:
        return conv_as_matrix(m.conv1, image_shape) if isinstance(m, LocalCNN) else m.fc1.weight

    return Setup(
        build={
            "fc": lambda: MLP(c * h * w, [ch * h * w]),
            "cnn": lambda: LocalCNN(image_shape, ch),
        },
        first_layer=first,
        wsr_layers=lambda m: [m.fc1.weight],
        window=3,
        circular=False,
    )


def _one_run(
    ws: Any,
    setup: Setup,
    model_name: str,
    split: datasets.Split,
    perm: torch.Tensor | None,
    tcfg: TrainConfig,
    lam: float,
    cfg: dict[str, Any],
    seed: int,
    ctx: Context,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = setup.build["cnn" if model_name == "cnn" else "fc"]().to(ctx.device)
    hook, make_opt = None, sgd
    if model_name in REGULARISED:
        params = setup.wsr_layers(model)

        def make_opt(m: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
            # one param group per regularised layer, so each can carry its own strength
            return torch.optim.SGD(
                own_groups(m, params), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
            )

        # official torus script: fc2 gets lam / 10
        hook = regulariser_hook(model_name, params, lam, cfg.get("lam2_ratio", 1.0))

    result = fit(model, split, tcfg, seed=seed, optimizer=make_opt, hook=hook)
    weight = setup.first_layer(model).detach()
    image_shape = split.image_shape
    if perm is not None:
        weight = metrics.unshuffle_columns(weight, perm, image_shape[0])
    result.update(
        seed=seed,
        lr=tcfg.lr,
        lam=lam if model_name in REGULARISED else 0.0,
        conv_likeness=metrics.conv_likeness(weight, image_shape, setup.window, setup.circular),
        **layer_stats(ws, weight),
    )
    if setup.templates:  # circulant-likeness: how much of each unit a few shifted templates explain
        share, _ = metrics.shift_sharing_2d(
            weight, image_shape, setup.window, setup.templates, setup.circular
        )
        result["sharing"] = float(share.mean())
    result["_weight"] = weight.cpu()
    return result


def config_for(preset: str, dataset: str) -> dict[str, Any]:
    """The preset's configuration for ``dataset`` (MNIST-1D has its own protocol)."""
    if dataset == "mnist1d":
        return dict(shuffled_1d.CONFIGS[preset])
    if dataset in OFFICIAL:
        # the official scripts have no l1-only control; ours uses mu = 1e-3 there
        return {
            **CONFIGS[preset],
            "l1_grid": [1e-3],
            **OFFICIAL[dataset][preset],
            "dataset": dataset,
        }
    return dict(CONFIGS[preset])


def run(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[str, Any], str, list]:
    ws = require("weightshare", "attach", "num_distinct", "zero_fraction", experiment=ctx.name)
    if ctx.dataset == "mnist1d":
        summary, table, figures = shuffled_1d.run(ctx, cfg, ws)
        write_results(ctx, summary, table)
        return summary, table, figures
    split = datasets.load(ctx.dataset, ctx.data_dir).to(ctx.device)
    image_shape = split.image_shape
    perm = datasets.pixel_permutation(image_shape, PERMUTATION_SEED)
    setup = _setup(ctx.dataset, image_shape, cfg)
    # mnist5k*: each seed carves its own validation slice; the others have one split
    by_seed = protocol.split_by_seed(ctx, split, SEEDED_SPLITS)
    shuffled: dict[int, datasets.Split] = {}

    def data(setting: str, seed: int) -> datasets.Split:
        base = by_seed(seed)
        if setting == "original":
            return base
        if id(base) not in shuffled:
            shuffled[id(base)] = datasets.permute_pixels(base, perm)
        return shuffled[id(base)]

    def go(arm: tuple[str, str], value: tuple[float, float], seed: int) -> dict[str, Any]:
        (model, setting), (lr, lam) = arm, value
        p = perm if setting == "shuffled" else None
        tcfg = TrainConfig(cfg["epochs"], lr, cfg["batch_size"], cfg["momentum"])
        return _one_run(ws, setup, model, data(setting, seed), p, tcfg, lam, cfg, seed, ctx)

    # 1. tuning on the validation set (mean over the tuning seeds): lr for fc and cnn, then the
    # strength of fc_wsr (lam) and fc_l1 (l1) at fc's lr
    tuning_seeds = list(range(cfg.get("tuning_seeds", 1)))
    runs = Runs(go, ctx)
    lrs = [(lr, 0.0) for lr in cfg["lr_grid"]]
    lr_grids = {(m, s): lrs for s in SETTINGS for m in ("fc", "cnn")}
    chosen = tune(runs, lr_grids, tuning_seeds, "tune lr", "smaller")
    grids = {
        (m, s): [(chosen[("fc", s)][0], v) for v in cfg[grid]]
        for m, grid in REGULARISED.items()
        for s in SETTINGS
    }
    # ties go to the stronger regulariser (more sharing/sparsity at equal accuracy)
    chosen.update(tune(runs, grids, tuning_seeds, "tune lam"))
    record = protocol.grid_record(runs, {**lr_grids, **grids}, tuning_seeds)

    # 2. the chosen configurations over all seeds (seed 0 is reused from tuning)
    final = over_seeds(
        runs, {(m, s): chosen[(m, s)] for m in MODELS for s in SETTINGS}, ctx.seeds, "seeds"
    )

    summary = _summarise(ctx, cfg, split, chosen, final, runs, image_shape, setup)
    score = "sharing" if setup.templates else "conv_likeness"
    summary.update(tuning_seeds=len(tuning_seeds), grid=record, claims=claims(final, score))
    table = _table(summary)
    figures = _figures(ctx, final, runs, image_shape, summary)
    write_results(ctx, summary, table)
    return summary, table, figures


def _summarise(ctx, cfg, split, chosen, final, runs, image_shape, setup) -> dict[str, Any]:
    models: dict[str, Any] = {}
    scores = ("conv_likeness", "num_distinct", "zero_fraction")
    if setup.templates:
        scores = ("conv_likeness", "sharing", "num_distinct", "zero_fraction")
    for m in MODELS:
        entry: dict[str, Any] = {
            s: model_entry(final[(m, s)], scores, lr=chosen[(m, s)][0], lam=chosen[(m, s)][1])
            for s in SETTINGS
        }
        entry["conv_likeness"] = entry["original"]["conv_likeness"]["mean"]
        entry["conv_likeness_shuffled"] = entry["shuffled"]["conv_likeness"]["mean"]
        if setup.templates:
            entry["sharing"] = entry["original"]["sharing"]["mean"]
        models[m] = entry
    keep = ("val_acc", "test_acc", *scores)
    tuning = [
        {"model": m, "setting": s, "lr": lr, "strength": v, **{x: r[x] for x in keep}}
        for ((m, s), (lr, v), seed), r in runs.results.items()
        if seed == 0 and (m in REGULARISED or v == 0.0)
    ]
    return {
        **summary_header(ctx, split.sizes, cfg),
        "config": {
            **cfg,
            "permutation_seed": PERMUTATION_SEED,
            "window": setup.window,
            "circular": setup.circular,
        },
        "models": models,
        "random_conv_likeness": metrics.random_locality(image_shape, setup.window, setup.circular),
        "tuning": tuning,
    }


def _table(summary: dict[str, Any]) -> str:
    rows = []
    for m in MODELS:
        e = summary["models"][m]
        o, s = e["original"], e["shuffled"]
        hp = f"lr {o['lr']:g}" + (
            f", λ {o['lam']:g}" if m == "fc_wsr" else f", μ {o['lam']:g}" if m == "fc_l1" else ""
        )
        rows.append(
            [
                f"`{m}`",
                fmt(o),
                fmt(s),
                f"{e['conv_likeness']:.3f}",
                f"{e['conv_likeness_shuffled']:.3f}",
                *([f"{e['sharing']:.3f}"] if "sharing" in e else []),
                f"{o['num_distinct']['mean']:.0f} / {o['num_weights']}",
                f"{o['zero_fraction']['mean']:.3f}",
                hp,
            ]
        )
    header = [
        "model",
        "test acc. original (%)",
        "test acc. shuffled (%)",
        "conv-likeness orig.",
        "conv-likeness shuffled",
        *(["shift-sharing orig."] if "sharing" in summary["models"]["fc"] else []),
        "distinct / weights (orig.)",
        "zero fraction (orig.)",
        "chosen (orig.)",
    ]
    note = (
        f"\nRandom (untrained Gaussian) first layer conv-likeness: "
        f"{summary['random_conv_likeness']:.3f}. Mean ± std over {summary['seeds']} seed(s); "
        f"{summary['dataset']}, split {summary['split_sizes']}.\n"
    )
    sweep = [
        [
            f"`{t['model']}`",
            f"{'λ' if t['model'] == 'fc_wsr' else 'μ'} = {t['strength']:g}",
            f"{100 * t['val_acc']:.1f}",
            f"{100 * t['test_acc']:.1f}",
            f"{t['conv_likeness']:.3f}",
            t["num_distinct"],
            f"{t['zero_fraction']:.3f}",
        ]
        for t in summary["tuning"]
        if t["model"] in REGULARISED and t["setting"] == "original"
    ]
    sweep_header = [
        "model",
        "strength",
        "val (%)",
        "test (%)",
        "conv-likeness",
        "distinct",
        "zeros",
    ]
    out = markdown_table(header, rows) + note
    if summary["tuning_seeds"] > 1:
        return (
            out
            + protocol.grid_table(summary["grid"], summary["tuning_seeds"], "lr, strength")
            + f"\nPaired comparisons over {summary['seeds']} seeds:\n\n"
            + protocol.claims_table(summary["claims"])
        )
    return (
        out
        + "\nStrength sweep (seed 0, original pixels, lr as chosen for `fc`):\n\n"
        + markdown_table(sweep_header, sweep)
    )


def _figures(ctx: Context, final, runs, image_shape, summary) -> list:
    shown = {f"{m}, {s}": final[(m, s)][0]["_weight"] for m in MODELS for s in SETTINGS}
    for m in REGULARISED:  # plus the sweep's most conv-like run (seed 0, original pixels)
        key = max(
            (k for k in runs.results if k[0] == (m, "original") and k[2] == 0),
            key=lambda k: runs.results[k]["conv_likeness"],
        )
        label = f"{m}, {'λ' if m == 'fc_wsr' else 'μ'}={key[1][1]:g} (sweep)"
        shown[label] = runs.results[key]["_weight"]
    panels = {}
    for title, w in shown.items():
        idx = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(FIGURE_UNITS_SEED))
        panels[title] = w[idx[:16]]
    figs = [plotting.unit_grid(panels, image_shape, ctx.out_dir / "first_layer_units.png")]
    series = accuracy_series(summary)
    low = min(v[0] for vals in series.values() for v in vals)
    figs.append(
        plotting.grouped_bars(
            list(MODELS),
            series,
            ctx.out_dir / "accuracy.png",
            "test accuracy",
            ylim=(max(0.0, low - 0.05), 1.0),
        )
    )
    sweep = {}
    for m in REGULARISED:
        pts = sorted(
            (t["strength"], t["conv_likeness"])
            for t in summary["tuning"]
            if t["model"] == m and t["setting"] == "original"
        )
        sweep[f"{m} (x = {'λ' if m == 'fc_wsr' else 'μ'})"] = (
            [p[0] for p in pts],
            [p[1] for p in pts],
            None,
        )
    figs.append(
        plotting.lines(
            sweep,
            ctx.out_dir / "conv_likeness_vs_strength.png",
            "regularisation strength",
            "conv-likeness (original pixels)",
            logx=True,
        )
    )
    return figs
