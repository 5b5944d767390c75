"""ArbNets: hashed MLPs at a fixed compression, sweeping balance (Dirichlet) and determinism
(Neighborhood); claim "balanced and deterministic weight sharing helps".

Every layer of an MLP ``in-128-128-10`` is a ``weightshare.nn.HashedLinear`` with
``K = ceil(in*out*compression)`` buckets. Baselines: the uniform hash (with and without the
HashedNets sign table), a dense MLP of the same number of free parameters written as a hash
(``hash="dense"``), and the uncompressed dense MLP.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from . import data as datasets
from . import plotting
from ._common import Context, fmt, markdown_table, mean_std, require, write_results
from .models import MLP, count_parameters
from .protocol import Runs, over_seeds, presets, summary_header, tune
from .train import TrainConfig, fit

CONFIGS = presets(
    {"momentum": 0.9, "compression": 1 / 8},
    full={
        "seeds": 3,
        "epochs": 40,
        "batch_size": 32,
        "lr_grid": [0.03, 0.1, 0.3],
        "hidden": [128, 128],
        "alphas": [0.01, 0.1, 1.0, 10.0],
        "radii": [0, 1, 8, 64, 1024],
    },
    quick={
        "seeds": 2,
        "epochs": 20,
        "batch_size": 32,
        "lr_grid": [0.1],
        "hidden": [128, 128],
        "alphas": [0.01, 1.0],
        "radii": [0, 1024],
    },
    smoke={
        "seeds": 1,
        "epochs": 1,
        "batch_size": 128,
        "lr_grid": [0.1],
        "hidden": [16, 16],
        "alphas": [1.0],
        "radii": [0],
    },
)


def _variants(cfg: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, hash, extra HashedLinear kwargs) for every hashed variant."""
    out = [("uniform", "uniform", {}), ("uniform+sign", "uniform", {"signed": True})]
    out += [(f"dirichlet α={a:g}", "dirichlet", {"alpha": a}) for a in cfg["alphas"]]
    out += [(f"neighborhood r={r}", "neighborhood", {"radius": r}) for r in cfg["radii"]]
    # r = 0 with K + 1 buckets: the base table i mod K without duplicated rows (see the page)
    out.append(("neighborhood r=0, K+1", "neighborhood", {"radius": 0, "extra_bucket": 1}))
    return out


def _equivalent_width(sizes: list[int], free: int) -> int:
    """The hidden width h of a dense ``in-h-..-h-out`` MLP with at most ``free`` weights."""
    n_in, n_hidden, n_out = sizes[0], len(sizes) - 2, sizes[-1]
    h = 1
    while n_in * (h + 1) + (n_hidden - 1) * (h + 1) ** 2 + (h + 1) * n_out <= free:
        h += 1
    return h


def run(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[str, Any], str, list]:
    wsnn = require("weightshare.nn", "HashedLinear", experiment=ctx.name)
    split = datasets.load(ctx.dataset, ctx.data_dir).to(ctx.device)
    c, h, w = split.image_shape
    sizes = [c * h * w, *cfg["hidden"], split.num_classes]
    buckets = [math.ceil(a * b * cfg["compression"]) for a, b in itertools.pairwise(sizes)]
    free_weights = sum(buckets)
    width = _equivalent_width(sizes, free_weights)

    def hashed(hash_name: str, extra: dict[str, Any], seed: int) -> MLP:
        kw = {"signed": False, **extra}
        plus = kw.pop("extra_bucket", 0)

        def layer(i: int, n_in: int, n_out: int) -> torch.nn.Module:
            return wsnn.HashedLinear(
                n_in, n_out, buckets[i] + plus, hash=hash_name, seed=1000 * seed + i, **kw
            )

        return MLP(sizes[0], cfg["hidden"], split.num_classes, linear=layer)

    def dense_as_hash(seed: int) -> MLP:
        def layer(_i: int, n_in: int, n_out: int) -> torch.nn.Module:
            return wsnn.HashedLinear(n_in, n_out, n_in * n_out, hash="dense", signed=False)

        return MLP(sizes[0], [width] * len(cfg["hidden"]), split.num_classes, linear=layer)

    builders: dict[str, Any] = {
        label: (lambda seed, hn=hn, ex=ex: hashed(hn, ex, seed)) for label, hn, ex in _variants(cfg)
    }
    builders[f"dense, equal size (h={width})"] = dense_as_hash
    builders["dense, uncompressed"] = lambda seed: MLP(sizes[0], cfg["hidden"], split.num_classes)

    def go(label: str, lr: float, seed: int) -> dict[str, Any]:
        torch.manual_seed(seed)
        model = builders[label](seed).to(ctx.device)
        tcfg = TrainConfig(cfg["epochs"], lr, cfg["batch_size"], cfg["momentum"])
        res = fit(model, split, tcfg, seed=seed)
        layers = [m for m in model.layers() if hasattr(m, "entropy")]
        if layers:
            numel = [m.index.numel() for m in layers]
            ents = [float(m.entropy(normalized=True)) for m in layers]
            res["entropy"] = float(np.average(ents, weights=numel))
        else:
            res["entropy"] = 1.0  # plain nn.Linear: every weight is its own bucket
        res.update(seed=seed, lr=lr, free_parameters=count_parameters(model))
        return res

    # tuning: lr for the uniform hash on the validation set (seed 0), used for every variant
    runs = Runs(go, ctx)
    lr = tune(runs, {"uniform": cfg["lr_grid"]}, [0], "tune lr", "smaller")["uniform"]
    results = over_seeds(runs, dict.fromkeys(builders, lr), ctx.seeds, "runs")

    variants = {
        label: {
            **mean_std([r["test_acc"] for r in rs]),
            "val": mean_std([r["val_acc"] for r in rs]),
            "entropy": mean_std([r["entropy"] for r in rs]),
            "free_parameters": rs[0]["free_parameters"],
            "runs": rs,
        }
        for label, rs in results.items()
    }
    balance = [lab for lab in variants if lab.startswith("dirichlet") or lab == "uniform"]
    rho = spearmanr(
        [variants[b]["entropy"]["mean"] for b in balance], [variants[b]["mean"] for b in balance]
    )
    radii = [f"neighborhood r={r}" for r in cfg["radii"]]
    summary = {
        **summary_header(ctx, split.sizes, cfg),
        "config": {**cfg, "buckets": buckets, "lr": lr, "equivalent_width": width},
        "tuning": [{"lr": v, "val_acc": runs("uniform", v, 0)["val_acc"]} for v in cfg["lr_grid"]],
        "variants": variants,
        "claims": {
            "balance_spearman": None if len(balance) < 3 else float(rho.statistic),
            "determinism_gap": variants[radii[0]]["mean"] - variants[radii[-1]]["mean"],
        },
    }
    rows = [
        [f"`{label}`", v["free_parameters"], f"{v['entropy']['mean']:.3f}", fmt(v)]
        for label, v in variants.items()
    ]
    table = markdown_table(
        ["variant", "free parameters", "normalised entropy", "test acc. (%)"], rows
    ) + (
        f"\nMLP {'-'.join(map(str, sizes))}, compression {cfg['compression']:g} "
        f"(buckets per layer {buckets}), lr {lr:g}; mean ± std over {ctx.seeds} seed(s). "
        f"Spearman(entropy, accuracy) over uniform + Dirichlet: {_num(summary['claims'])}; "
        f"accuracy(r=0) - accuracy(r={cfg['radii'][-1]})"
        f" = {100 * summary['claims']['determinism_gap']:.2f} points.\n"
    )
    figures = _figures(ctx, variants, cfg, balance, radii)
    write_results(ctx, summary, table)
    return summary, table, figures


def _num(claims: dict[str, Any]) -> str:
    rho = claims["balance_spearman"]
    return "n/a" if rho is None else f"{rho:.2f}"


def _figures(ctx, variants, cfg, balance, radii) -> list:
    series = {
        "Dirichlet / uniform": (
            [variants[b]["entropy"]["mean"] for b in balance],
            [variants[b]["mean"] for b in balance],
            [variants[b]["std"] for b in balance],
        ),
        "Neighborhood": (
            [variants[r]["entropy"]["mean"] for r in radii],
            [variants[r]["mean"] for r in radii],
            [variants[r]["std"] for r in radii],
        ),
    }
    f1 = plotting.lines(
        series, ctx.out_dir / "accuracy_vs_entropy.png", "normalised entropy", "test accuracy"
    )
    f2 = plotting.lines(
        {"Neighborhood": ([r + 1 for r in cfg["radii"]], *series["Neighborhood"][1:])},
        ctx.out_dir / "accuracy_vs_radius.png",
        "radius r + 1",
        "test accuracy",
        logx=True,
    )
    return [f1, f2]
