"""Weight symmetry: an MLP with square hidden layers and a small CNN with square convs, each
symmetric kind vs dense; claim "large parameter cuts at little accuracy cost".

Only the square layers are constrained (as the official code does for the bottleneck 3x3 convs):
the MLP ``in-128-128-128-10`` has ``fc2``, ``fc3`` (128x128); the CNN has three 3x3 convs
(``in -> 16``, ``16 -> 16``, ``16 -> 16``), of which the last two are constrained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import plotting
from ._common import Context, fmt, markdown_table, mean_std, require, write_results
from .models import MLP, SmallCNN, count_parameters
from .protocol import Runs, over_seeds, presets, summary_header, tune
from .train import TrainConfig, fit

MLP_KINDS: dict[str, dict[str, Any]] = {
    "dense": {},
    "symmetric": {"kind": "symmetric"},
    "quarter": {"kind": "quarter"},
    "eightfold": {"kind": "eightfold"},
    "block4": {"kind": "block4"},
    "chunk (c=2)": {"kind": "chunk", "chunks": 2},
    "eigen (r=n/4)": {"kind": "eigen", "rank": "n/4"},
}
CNN_KINDS: dict[str, dict[str, Any]] = {
    "dense": {},
    "channel": {"kind": "channel"},
    "spatial": {"kind": "spatial"},
    "channel+spatial": {"kind": "channel+spatial"},
    "quarter": {"kind": "quarter"},
    "eightfold": {"kind": "eightfold"},
    "block4": {"kind": "block4"},
    "chunk (c=2)": {"kind": "chunk", "chunks": 2},
    "eigen (r=n/4)": {"kind": "eigen", "rank": "n/4"},
}

CONFIGS = presets(
    {"batch_size": 32, "momentum": 0.9, "mlp_width": 128, "cnn_channels": 16},
    full={
        "seeds": 3,
        "epochs": 30,
        "lr_grid": [0.03, 0.1],
        "mlp_kinds": list(MLP_KINDS),
        "cnn_kinds": list(CNN_KINDS),
    },
    quick={
        "seeds": 1,
        "epochs": 15,
        "lr_grid": [0.1],
        "mlp_kinds": ["dense", "symmetric", "eightfold"],
        "cnn_kinds": ["dense", "channel", "channel+spatial"],
    },
    smoke={
        "seeds": 1,
        "epochs": 1,
        "batch_size": 128,
        "lr_grid": [0.1],
        "mlp_width": 16,
        "cnn_channels": 4,
        "mlp_kinds": ["dense", "symmetric"],
        "cnn_kinds": ["dense", "channel"],
    },
)


def _constrain(layers: list[nn.Module], spec: dict[str, Any], ws: Any) -> None:
    for layer in layers:
        if not spec:
            continue
        kw = dict(spec)
        if kw.get("rank") == "n/4":
            kw["rank"] = max(1, layer.weight.shape[0] // 4)
        ws.symmetric(layer, "weight", **kw)


def run(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[str, Any], str, list]:
    ws = require("weightshare", "symmetric", experiment=ctx.name)
    split = datasets.load(ctx.dataset, ctx.data_dir).to(ctx.device)
    image_shape = split.image_shape
    c, h, w = image_shape
    width, ch = cfg["mlp_width"], cfg["cnn_channels"]

    def build(arch: str, label: str) -> nn.Module:
        if arch == "mlp":
            model = MLP(c * h * w, [width] * 3, split.num_classes)
            _constrain([model.fc2, model.fc3], MLP_KINDS[label], ws)
        else:
            model = SmallCNN(image_shape, ch, num_convs=3, classes=split.num_classes)
            _constrain(list(model.convs[1:]), CNN_KINDS[label], ws)
        return model

    def go(arch: str, label: str, lr: float, seed: int) -> dict[str, Any]:
        torch.manual_seed(seed)
        model = build(arch, label).to(ctx.device)
        tcfg = TrainConfig(cfg["epochs"], lr, cfg["batch_size"], cfg["momentum"])
        res = fit(model, split, tcfg, seed=seed)
        res.update(seed=seed, lr=lr, free_parameters=count_parameters(model))
        return res

    archs = {"mlp": cfg["mlp_kinds"], "cnn": cfg["cnn_kinds"]}
    # tuning: lr of the dense model of each architecture on validation (seed 0), reused per kind
    runs = Runs(lambda arm, lr, seed: go(*arm, lr, seed), ctx)
    lrs = tune(runs, {(a, "dense"): cfg["lr_grid"] for a in archs}, [0], "tune lr", "smaller")
    lrs = {a: lrs[(a, "dense")] for a in archs}
    final = over_seeds(
        runs, {(a, k): lrs[a] for a, kinds in archs.items() for k in kinds}, ctx.seeds, "runs"
    )
    results = {a: {k: final[(a, k)] for k in kinds} for a, kinds in archs.items()}

    models: dict[str, Any] = {}
    rows = []
    for a, kinds in results.items():
        dense = mean_std([r["test_acc"] for r in kinds["dense"]])
        dense_free = kinds["dense"][0]["free_parameters"]
        models[a] = {}
        for k, rs in kinds.items():
            acc = mean_std([r["test_acc"] for r in rs])
            free = rs[0]["free_parameters"]
            models[a][k] = {
                **acc,
                "val": mean_std([r["val_acc"] for r in rs]),
                "free_parameters": free,
                "parameter_cut": 1.0 - free / dense_free,
                "accuracy_drop": dense["mean"] - acc["mean"],
                "runs": rs,
            }
            rows.append(
                [
                    a.upper(),
                    f"`{k}`",
                    free,
                    f"{100 * (1 - free / dense_free):.1f}",
                    fmt(acc),
                    f"{100 * (dense['mean'] - acc['mean']):+.2f}",
                ]
            )
    summary = {
        **summary_header(ctx, split.sizes, cfg),
        "config": {**cfg, "lr": lrs},
        "tuning": [
            {"arch": a, "lr": lr, "val_acc": runs((a, "dense"), lr, 0)["val_acc"]}
            for a in archs
            for lr in cfg["lr_grid"]
        ],
        "models": models,
    }
    table = (
        markdown_table(
            [
                "model",
                "kind",
                "free parameters",
                "parameter cut (%)",
                "test acc. (%)",
                "drop vs dense (points)",
            ],
            rows,
        )
        + f"\nlr {lrs}; mean ± std over {ctx.seeds} seed(s); {ctx.dataset}, split {split.sizes}.\n"
    )
    series = {
        a.upper(): (
            [v["free_parameters"] for v in models[a].values()],
            [v["mean"] for v in models[a].values()],
            [v["std"] for v in models[a].values()],
        )
        for a in models
    }
    fig = plotting.lines(
        series,
        ctx.out_dir / "accuracy_vs_free_parameters.png",
        "free parameters",
        "test accuracy",
        logx=True,
        connect=False,
    )
    write_results(ctx, summary, table)
    return summary, table, [fig]
