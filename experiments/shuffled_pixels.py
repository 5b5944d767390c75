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
from . import metrics, plotting, shuffled_1d
from ._common import (
    Context,
    fmt,
    markdown_table,
    mean_std,
    progress,
    public,
    require,
    write_results,
)
from .models import MLP, LocalCNN, Net2CNN, Net2FC, conv_as_matrix
from .train import TrainConfig, fit, sgd

MODELS = ("fc", "fc_wsr", "fc_l1", "cnn")
REGULARISED = {"fc_wsr": "lam_grid", "fc_l1": "l1_grid"}  # model -> its strength grid
SETTINGS = ("original", "shuffled")
PERMUTATION_SEED = 1234
FIGURE_UNITS_SEED = 777

# SGD without momentum, cosine schedule: the official WSR setting, where prox-SGD is exact.
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": 5,
        "dataset": "mnist1d",
        "epochs": 30,
        "batch_size": 32,
        "momentum": 0.0,
        "lr_grid": [0.1, 0.3],
        "lam_grid": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
        "l1_grid": [1e-4, 1e-3, 1e-2],
        "channels": 4,
    },
    "quick": {
        "seeds": 2,
        "dataset": "mnist1d",
        "epochs": 20,
        "batch_size": 32,
        "momentum": 0.0,
        "lr_grid": [0.3],
        "lam_grid": [1e-3, 3e-3],
        "l1_grid": [1e-3],
        "channels": 4,
    },
    "smoke": {
        "seeds": 1,
        "dataset": "mnist1d",
        "epochs": 1,
        "batch_size": 128,
        "momentum": 0.0,
        "lr_grid": [0.3],
        "lam_grid": [1e-3],
        "l1_grid": [1e-3],
        "channels": 2,
    },
}

# Other data sets override the digits presets. mnist-torus and cifar10 are the official
# configurations (scripts/run_mnist_torus_14.sh, scripts/run_cifar10.sh; need --data-dir);
# digits-torus is ours: the torus protocol with the official models, on digits.
_TORUS = {"lam2_ratio": 0.1, "l1_grid": [1e-3]}
OFFICIAL: dict[str, dict[str, dict[str, Any]]] = {
    "digits-torus": {
        "full": {
            **_TORUS,
            "epochs": 30,
            "batch_size": 32,
            "momentum": 0.0,
            "lr_grid": [0.3],
            "lam_grid": [3e-4, 1e-3, 3e-3],
            "alpha1": 4,
            "alpha2": 8,
        },
        "quick": {
            **_TORUS,
            "epochs": 20,
            "batch_size": 32,
            "momentum": 0.0,
            "lr_grid": [0.3],
            "lam_grid": [1e-3],
            "alpha1": 4,
            "alpha2": 8,
        },
        "smoke": {
            **_TORUS,
            "epochs": 1,
            "batch_size": 128,
            "momentum": 0.0,
            "lr_grid": [0.3],
            "lam_grid": [1e-3],
            "alpha1": 1,
            "alpha2": 2,
        },
    },
    "mnist-torus": {
        "full": {
            "epochs": 200,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "lam2_ratio": 0.1,
            "alpha1": 32,
            "alpha2": 64,
        },
        "quick": {
            "epochs": 10,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "lam2_ratio": 0.1,
            "alpha1": 4,
            "alpha2": 8,
        },
        "smoke": {
            "epochs": 1,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "lam2_ratio": 0.1,
            "alpha1": 1,
            "alpha2": 2,
        },
    },
    "cifar10": {
        "full": {
            "epochs": 400,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "channels": 64,
        },
        "quick": {
            "epochs": 10,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "channels": 8,
        },
        "smoke": {
            "epochs": 1,
            "batch_size": 512,
            "momentum": 0.0,
            "lr_grid": [0.1],
            "lam_grid": [1e-3],
            "channels": 2,
        },
    },
}


class SFC(nn.Module):
    """Neyshabur (2020) S-FC: ``3072 -> 256*ch -> 24*ch -> 10`` with BN+ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3 * 32 * 32, 256 * ch)
        self.body = nn.Sequential(
            nn.BatchNorm1d(256 * ch),
            nn.ReLU(),
            nn.Linear(256 * ch, 24 * ch),
            nn.BatchNorm1d(24 * ch),
            nn.ReLU(),
            nn.Linear(24 * ch, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc1(x.flatten(1)))


class SConv(nn.Module):
    """Neyshabur (2020) S-Conv: 9x9 stride-2 conv (ch) + BN+ReLU, then S-FC's head."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 9, stride=2, padding=4)
        self.body = nn.Sequential(
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 16 * ch, 24 * ch),
            nn.BatchNorm1d(24 * ch),
            nn.ReLU(),
            nn.Linear(24 * ch, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv1(x))


@dataclass(frozen=True)
class Setup:
    """Per-data-set choices: model builders, the first layer's matrix and the locality window."""

    build: dict[str, Callable[[], nn.Module]]
    first_layer: Callable[[nn.Module], torch.Tensor]
    wsr_layers: Callable[[nn.Module], list[nn.Parameter]]
    window: int
    circular: bool


def _setup(dataset: str, image_shape: tuple[int, int, int], cfg: dict[str, Any]) -> Setup:
    c, h, w = image_shape
    if dataset in ("mnist-torus", "digits-torus"):
        a1, a2 = cfg["alpha1"], cfg["alpha2"]

        def first(m: nn.Module) -> torch.Tensor:
            return conv_as_matrix(m.conv1, image_shape) if isinstance(m, Net2CNN) else m.fc1.weight

        return Setup(
            build={"fc": lambda: Net2FC(h, a1, a2), "cnn": lambda: Net2CNN(a1, a2)},
            first_layer=first,
            wsr_layers=lambda m: [m.fc1.weight, m.fc2.weight],
            window=3,
            circular=True,
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
        lams = [lam] + [lam * cfg.get("lam2_ratio", 1.0)] * (len(params) - 1)

        def make_opt(m: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
            # one param group per regularised layer, so each can carry its own wsr_lam
            ids = {id(p) for p in params}
            rest = [p for p in m.parameters() if id(p) not in ids]
            groups = [{"params": [p]} for p in params] + [{"params": rest}]
            return torch.optim.SGD(
                groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
            )

        def hook(opt: torch.optim.Optimizer) -> Any:
            if model_name == "fc_l1":  # the control: l1 prox only (soft-thresholding)
                return ws.attach(opt, 0.0, params=params, l1=lam)
            handle = ws.attach(opt, lam, params=params)
            for group, group_lam in zip(opt.param_groups, lams, strict=False):
                group["wsr_lam"] = group_lam  # official torus script: fc2 gets lam / 10
            return handle

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
        num_distinct=int(ws.num_distinct(weight)),
        zero_fraction=float(ws.zero_fraction(weight)),
        num_weights=int(weight.numel()),
    )
    result["_weight"] = weight.cpu()
    return result


def config_for(preset: str, dataset: str) -> dict[str, Any]:
    """The preset's configuration for ``dataset`` (MNIST-1D has its own protocol)."""
    if dataset == "mnist1d":
        return dict(shuffled_1d.CONFIGS[preset])
    return dict(CONFIGS[preset])


def run(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[str, Any], str, list]:
    ws = require("weightshare", "attach", "num_distinct", "zero_fraction", experiment=ctx.name)
    if ctx.dataset == "mnist1d":
        summary, table, figures = shuffled_1d.run(ctx, cfg, ws)
        write_results(ctx, summary, table)
        return summary, table, figures
    if ctx.dataset in OFFICIAL:
        # the official scripts have no l1-only control; ours uses mu = 1e-3 there
        cfg = {**cfg, "l1_grid": [1e-3], **OFFICIAL[ctx.dataset][ctx.preset]}
    split = datasets.load(ctx.dataset, ctx.data_dir).to(ctx.device)
    image_shape = split.image_shape
    perm = datasets.pixel_permutation(image_shape, PERMUTATION_SEED)
    data = {"original": split, "shuffled": datasets.permute_pixels(split, perm)}
    setup = _setup(ctx.dataset, image_shape, cfg)

    def tcfg(lr: float) -> TrainConfig:
        return TrainConfig(cfg["epochs"], lr, cfg["batch_size"], cfg["momentum"])

    def go(model: str, setting: str, lr: float, lam: float, seed: int) -> dict[str, Any]:
        p = perm if setting == "shuffled" else None
        return _one_run(ws, setup, model, data[setting], p, tcfg(lr), lam, cfg, seed, ctx)

    # 1. tuning on the validation set (seed 0): lr for fc and cnn, then the strength of fc_wsr
    # (lam) and fc_l1 (l1) at fc's lr
    jobs: list[tuple[str, str, float, float]] = [
        (m, s, lr, 0.0) for s in SETTINGS for m in ("fc", "cnn") for lr in cfg["lr_grid"]
    ]
    runs: dict[tuple[str, str, float, float, int], dict[str, Any]] = {}
    for job in progress(jobs, ctx, "tune lr"):
        runs[(*job, 0)] = go(*job, 0)
    chosen: dict[tuple[str, str], tuple[float, float]] = {}
    for s in SETTINGS:
        for m in ("fc", "cnn"):
            best = max(cfg["lr_grid"], key=lambda lr, m=m, s=s: runs[(m, s, lr, 0.0, 0)]["val_acc"])
            chosen[(m, s)] = (best, 0.0)
    jobs = [
        (m, s, chosen[("fc", s)][0], lam)
        for m, grid in REGULARISED.items()
        for s in SETTINGS
        for lam in cfg[grid]
    ]
    for job in progress(jobs, ctx, "tune lam"):
        runs[(*job, 0)] = go(*job, 0)
    for m, grid in REGULARISED.items():
        for s in SETTINGS:
            lr = chosen[("fc", s)][0]
            # ties go to the stronger regulariser (more sharing/sparsity at equal accuracy)
            best = max(
                cfg[grid], key=lambda v, m=m, s=s, lr=lr: (runs[(m, s, lr, v, 0)]["val_acc"], v)
            )
            chosen[(m, s)] = (lr, best)

    # 2. the chosen configurations over all seeds (seed 0 is reused from tuning)
    jobs5 = [
        (m, s, *chosen[(m, s)], seed) for m in MODELS for s in SETTINGS for seed in range(ctx.seeds)
    ]
    for job in progress(jobs5, ctx, "seeds"):
        if job not in runs:
            runs[job] = go(*job)
    final = {
        (m, s): [runs[(m, s, *chosen[(m, s)], seed)] for seed in range(ctx.seeds)]
        for m in MODELS
        for s in SETTINGS
    }

    summary = _summarise(ctx, cfg, split, chosen, final, runs, image_shape, setup)
    table = _table(summary)
    figures = _figures(ctx, final, runs, image_shape, summary)
    write_results(ctx, summary, table)
    return summary, table, figures


def _summarise(ctx, cfg, split, chosen, final, runs, image_shape, setup) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for m in MODELS:
        entry: dict[str, Any] = {}
        for s in SETTINGS:
            rs = final[(m, s)]
            entry[s] = {
                **mean_std([r["test_acc"] for r in rs]),
                "val": mean_std([r["val_acc"] for r in rs]),
                "lr": chosen[(m, s)][0],
                "lam": chosen[(m, s)][1],
                "conv_likeness": mean_std([r["conv_likeness"] for r in rs]),
                "num_distinct": mean_std([r["num_distinct"] for r in rs]),
                "zero_fraction": mean_std([r["zero_fraction"] for r in rs]),
                "num_weights": rs[0]["num_weights"],
                "runs": [public(r) for r in rs],
            }
        entry["conv_likeness"] = entry["original"]["conv_likeness"]["mean"]
        entry["conv_likeness_shuffled"] = entry["shuffled"]["conv_likeness"]["mean"]
        models[m] = entry
    keep = ("val_acc", "test_acc", "conv_likeness", "num_distinct", "zero_fraction")
    tuning = [
        {"model": k[0], "setting": k[1], "lr": k[2], "strength": k[3], **{x: r[x] for x in keep}}
        for k, r in runs.items()
        if k[4] == 0 and (k[0] in REGULARISED or k[3] == 0.0)
    ]
    return {
        "experiment": ctx.name,
        "preset": ctx.preset,
        "dataset": ctx.dataset,
        "split_sizes": split.sizes,
        "seeds": ctx.seeds,
        "config": {
            **cfg,
            "permutation_seed": PERMUTATION_SEED,
            "window": setup.window,
            "circular": setup.circular,
        },
        "models": models,
        "random_conv_likeness": metrics.random_locality(image_shape, setup.window, setup.circular),
        "tuning": tuning,
        "device": str(ctx.device),
        "torch": torch.__version__,
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
    return (
        markdown_table(header, rows)
        + note
        + "\nStrength sweep (seed 0, original pixels, lr as chosen for `fc`):\n\n"
        + markdown_table(sweep_header, sweep)
    )


def _figures(ctx: Context, final, runs, image_shape, summary) -> list:
    shown = {f"{m}, {s}": final[(m, s)][0]["_weight"] for m in MODELS for s in SETTINGS}
    for m in REGULARISED:  # plus the sweep's most conv-like run (seed 0, original pixels)
        key = max(
            (k for k in runs if k[0] == m and k[1] == "original" and k[4] == 0),
            key=lambda k: runs[k]["conv_likeness"],
        )
        shown[f"{m}, {'λ' if m == 'fc_wsr' else 'μ'}={key[3]:g} (sweep)"] = runs[key]["_weight"]
    panels = {}
    for title, w in shown.items():
        idx = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(FIGURE_UNITS_SEED))
        panels[title] = w[idx[:16]]
    figs = [plotting.unit_grid(panels, image_shape, ctx.out_dir / "first_layer_units.png")]
    series = {
        s: [(summary["models"][m][s]["mean"], summary["models"][m][s]["std"]) for m in MODELS]
        for s in SETTINGS
    }
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
