"""The WSR headline on MNIST-1D (``shuffled-pixels --dataset mnist1d``, the default).

The MNIST-1D reference models and training (Greydanus & Kobak 2024): the residual MLP
``40 -> 256 -> 256 -> 10`` (``fc``) and the three-layer Conv1d net (``cnn``), Adam at lr 1e-2,
batches of 100 in order, a fixed number of steps. ``fc_wsr`` is the MLP with ``weightshare.attach``
on its first layer (one vector per tensor, strength lambda from a validation grid); ``fc_l1`` is
the l1-prox control. Every model runs on the original signals and on signals whose 40 positions
are shuffled by one fixed permutation (the same for train and test).

Hyper-parameters are chosen on a validation slice of 400 training examples (seed 0, the other
3,600 train); the final runs train on all 4,000 and report the official 1,000 test examples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import metrics, plotting, protocol
from ._common import Context, fmt, markdown_table, mean_std
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
from .models import CNN1D, ResMLP1D, conv1d_as_matrix
from .protocol import Runs, over_seeds, own_groups, summary_header, tune
from .train import StepConfig, adam, fit_steps

#: optional variants at fc_wsr's chosen lambda: the official retrain mode (``weightshare.tie``)
#: and the prox on the second layer too (at lambda / 10)
EXTRAS = ("fc_wsr_tied", "fc_wsr2")
#: the MNIST-1D README's table (test accuracy, %), for the models we re-run
PUBLISHED = {
    "fc": {"original": 68.0, "shuffled": 68.0},
    "cnn": {"original": 94.0, "shuffled": 56.0},
}
PUBLISHED_OTHER = {"logistic regression": (32.0, 32.0), "GRU": (91.0, 57.0)}

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": 5,
        "steps": 8000,
        "lr": 1e-2,
        "batch_size": 100,
        "tuning_seeds": 3,
        "lam_grid": [1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5],
        "l1_grid": [1e-3, 3e-3, 1e-2, 3e-2, 0.1],
        "window": 5,
        "templates": 25,
        "extras": list(EXTRAS),
    },
    "quick": {  # the strengths the full run chose (mean over 3 tuning seeds, both settings)
        "seeds": 2,
        "steps": 4000,
        "lr": 1e-2,
        "batch_size": 100,
        "lam_grid": [0.1],
        "l1_grid": [0.1],
        "window": 5,
        "templates": 25,
    },
    "smoke": {
        "seeds": 1,
        "steps": 40,
        "lr": 1e-2,
        "batch_size": 100,
        "lam_grid": [0.3],
        "l1_grid": [1e-3],
        "window": 5,
        "templates": 4,
        "extras": list(EXTRAS),
    },
}


def _layerwise_adam(model: nn.Module, cfg: StepConfig) -> torch.optim.Optimizer:
    """Adam with ``fc1`` and ``fc2`` in param groups of their own (each its own WSR strength)."""
    groups = own_groups(model, [model.fc1.weight, model.fc2.weight])
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _first_layer(model: nn.Module) -> torch.Tensor:
    if isinstance(model, CNN1D):
        return conv1d_as_matrix(model.conv1, 40)
    return model.fc1.weight


def _one_run(
    ws: Any,
    model_name: str,
    split: datasets.Split,
    perm: torch.Tensor | None,
    scfg: StepConfig,
    lam: float,
    cfg: dict[str, Any],
    seed: int,
    ctx: Context,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    length = split.image_shape[-1]
    model = (CNN1D(length) if model_name == "cnn" else ResMLP1D(length)).to(ctx.device)
    hook = None
    if model_name in ("fc_wsr", "fc_wsr_tied", "fc_l1"):  # fc_l1: the control, l1 prox only
        hook = regulariser_hook(model_name, [model.fc1.weight], lam)
    elif model_name == "fc_wsr2":  # fc1 at lambda, fc2 at lambda/10 (the official torus ratio)
        hook = regulariser_hook(model_name, [model.fc1.weight, model.fc2.weight], lam, 0.1)
    optimizer = _layerwise_adam if model_name == "fc_wsr2" else adam
    result = fit_steps(model, split, scfg, seed=seed, optimizer=optimizer, hook=hook)
    if model_name == "fc_wsr_tied":  # the official retrain mode: tie fc1 to its clusters and
        # train again for as many steps, without the prox (the shared values stay shared)
        ws.tie(model.fc1, "weight")
        first = result["seconds"]
        result = fit_steps(model, split, scfg, seed=seed, optimizer=adam)
        result["seconds"] = round(first + result["seconds"], 3)
    weight = _first_layer(model).detach()
    if perm is not None:
        weight = metrics.unshuffle_columns(weight, perm)
    likeness = metrics.conv_likeness_1d(weight, cfg["window"], cfg["templates"])
    result.update(
        seed=seed,
        lr=scfg.lr,
        lam=lam if model_name in REGULARISED or model_name in EXTRAS else 0.0,
        conv_likeness=likeness["locality"],
        sharing=likeness["sharing"],
        peak=likeness["peak"],
        live_units=likeness["live_units"],
        **layer_stats(ws, weight),
    )
    result["_weight"] = weight.cpu()
    return result


def run(ctx: Context, cfg: dict[str, Any], ws: Any) -> tuple[dict[str, Any], str, list]:
    final_split = datasets.load_mnist1d(refit=True).to(ctx.device)
    perm = datasets.pixel_permutation(final_split.image_shape, PERMUTATION_SEED)
    splits: dict[tuple[bool, int, str], datasets.Split] = {}

    def split_for(refit: bool, seed: int, setting: str) -> datasets.Split:
        # tuning: the seed's validation slice of 400 (3,600 train); final: all 4,000
        key = (refit, 0 if refit else seed, setting)
        if key not in splits:
            base = final_split if refit else datasets.load_mnist1d(seed).to(ctx.device)
            splits[key] = base if setting == "original" else datasets.permute_pixels(base, perm)
        return splits[key]

    scfg = StepConfig(cfg["steps"], cfg["lr"], cfg["batch_size"])

    def go(model: str, setting: str, lam: float, seed: int, refit: bool) -> dict[str, Any]:
        p = perm if setting == "shuffled" else None
        split = split_for(refit, seed, setting)
        return _one_run(ws, model, split, p, scfg, lam, cfg, seed, ctx)

    # 1. strengths on the validation slices (mean over the tuning seeds, each its own slice of
    # 400 and 3,600 to train on); a one-point grid needs no run
    tuning_seeds = list(range(cfg.get("tuning_seeds", 1)))
    tune_runs = Runs(lambda arm, lam, seed: go(*arm, lam, seed, refit=False), ctx, "tune")
    chosen: dict[tuple[str, str], float] = {(m, s): 0.0 for m in ("fc", "cnn") for s in SETTINGS}
    grids = {(m, s): cfg[grid] for m, grid in REGULARISED.items() for s in SETTINGS}
    if any(len(grid) > 1 for grid in grids.values()):
        # the unregularised MLP on the same split is the reference point of the sweep
        tune_runs.all(((("fc", s), 0.0, t) for s in SETTINGS for t in tuning_seeds), "reference")
        # ties go to the stronger regulariser (more sharing/sparsity at equal accuracy)
        chosen.update(tune(tune_runs, grids, tuning_seeds, "tune strength"))
        record = protocol.grid_record(
            tune_runs, {**{("fc", s): [0.0] for s in SETTINGS}, **grids}, tuning_seeds
        )
    else:
        chosen.update({arm: grid[0] for arm, grid in grids.items()})
        record = []
    # the sweep of the table and figure: seed 0
    tuning = {(*arm, lam): r for (arm, lam, t), r in tune_runs.results.items() if t == 0}

    # 2. the chosen configurations on all 4,000 training examples, every seed
    final_runs = Runs(lambda arm, lam, seed: go(*arm, lam, seed, refit=True), ctx, "final")
    arms = {(m, s): chosen[(m, s)] for m in MODELS for s in SETTINGS}
    # optional variants at fc_wsr's chosen strength
    arms.update({(m, s): chosen[("fc_wsr", s)] for m in cfg.get("extras", []) for s in SETTINGS})
    chosen.update(arms)
    final = over_seeds(final_runs, arms, ctx.seeds, "seeds")
    summary = _summarise(ctx, cfg, final_split, chosen, final, tuning)
    summary.update(tuning_seeds=len(tuning_seeds), grid=record, claims=claims(final, "sharing"))
    table = _table(summary)
    figures = _figures(ctx, final, tuning, summary)
    return summary, table, figures


def _summarise(ctx, cfg, split, chosen, final, tuning) -> dict[str, Any]:
    models: dict[str, Any] = {}
    scores = ("conv_likeness", "sharing", "peak", "live_units", "num_distinct", "zero_fraction")
    for m in (*MODELS, *cfg.get("extras", [])):
        entry: dict[str, Any] = {
            s: model_entry(
                final[(m, s)],
                scores,
                train=mean_std([r["train_acc"] for r in final[(m, s)]]),
                lr=cfg["lr"],
                lam=chosen[(m, s)],
                published=PUBLISHED.get(m, {}).get(s),
            )
            for s in SETTINGS
        }
        entry["conv_likeness"] = entry["original"]["conv_likeness"]["mean"]
        entry["conv_likeness_shuffled"] = entry["shuffled"]["conv_likeness"]["mean"]
        entry["sharing"] = entry["original"]["sharing"]["mean"]
        entry["sharing_shuffled"] = entry["shuffled"]["sharing"]["mean"]
        models[m] = entry
    keep = (
        "val_acc",
        "test_acc",
        "conv_likeness",
        "sharing",
        "peak",
        "live_units",
        "num_distinct",
        "zero_fraction",
    )
    floor = metrics.random_conv_likeness_1d(
        tuple(final[("fc", "original")][0]["_weight"].shape), cfg["window"], cfg["templates"]
    )
    return {
        **summary_header(ctx, split.sizes, cfg),
        "tuning_split_sizes": {"train": 4000 - datasets.MNIST1D_VAL, "val": datasets.MNIST1D_VAL},
        "config": {**cfg, "permutation_seed": PERMUTATION_SEED, "optimizer": "adam"},
        "models": models,
        "published": {
            **PUBLISHED,
            **{k: dict(zip(SETTINGS, v, strict=True)) for k, v in PUBLISHED_OTHER.items()},
        },
        "random_conv_likeness": floor["locality"],
        "anchors": {
            "random": floor,
            "cnn_dense": {
                "locality": models["cnn"]["conv_likeness"],
                "sharing": models["cnn"]["sharing"],
            },
        },
        "tuning": [
            {
                "model": k[0],
                "setting": k[1],
                "lr": cfg["lr"],
                "strength": k[2],
                **{x: r[x] for x in keep},
            }
            for k, r in tuning.items()
        ],
    }


def _pub(summary: dict[str, Any], m: str, s: str) -> str:
    v = summary["models"][m][s]["published"]
    return "–" if v is None else f"{v:.0f}"


def _table(summary: dict[str, Any]) -> str:
    rows = []
    for m in summary["models"]:
        e = summary["models"][m]
        o, s = e["original"], e["shuffled"]
        hp = (
            f"λ {s['lam']:g}"
            if m.startswith("fc_wsr")
            else f"μ {s['lam']:g}"
            if m == "fc_l1"
            else "–"
        )
        rows.append(
            [
                f"`{m}`",
                _pub(summary, m, "original"),
                fmt(o),
                _pub(summary, m, "shuffled"),
                fmt(s),
                f"{s['conv_likeness']['mean']:.3f}",
                f"{s['sharing']['mean']:.3f}",
                f"{s['peak']['mean']:.2f} / {s['live_units']['mean']:.0f}",
                f"{s['num_distinct']['mean']:.0f} / {s['num_weights']}",
                f"{s['zero_fraction']['mean']:.3f}",
                hp,
            ]
        )
    header = [
        "model",
        "published orig. (%)",
        "ours orig. (%)",
        "published shuffled (%)",
        "ours shuffled (%)",
        "locality (shuffled)",
        "sharing (shuffled)",
        "peak / live units (shuffled)",
        "distinct / weights (shuffled)",
        "zeros (shuffled)",
        "chosen (shuffled)",
    ]
    a = summary["anchors"]
    note = (
        f"\nMean ± std over {summary['seeds']} seed(s), {summary['config']['steps']} Adam steps; "
        f"MNIST-1D test set ({summary['split_sizes']['test']}). Conv-likeness of the first layer "
        f"after undoing the permutation (window {summary['config']['window']}, "
        f"{summary['config']['templates']} templates): random layer locality "
        f"{a['random']['locality']:.3f}, sharing {a['random']['sharing']:.3f}; the CNN's first "
        f"layer as a dense matrix {a['cnn_dense']['locality']:.3f}, "
        f"{a['cnn_dense']['sharing']:.3f}. Published (MNIST-1D README): logistic regression "
        "32 / 32, GRU 91 / 57.\n"
    )
    sweep = [
        [
            f"`{t['model']}`",
            t["setting"],
            "–"
            if t["model"] == "fc"
            else f"{'λ' if t['model'] == 'fc_wsr' else 'μ'} = {t['strength']:g}",
            f"{100 * t['val_acc']:.1f}",
            f"{100 * t['test_acc']:.1f}",
            f"{t['conv_likeness']:.3f}",
            f"{t['sharing']:.3f}",
            f"{t['peak']:.2f}",
            t["live_units"],
            t["num_distinct"],
            f"{t['zero_fraction']:.3f}",
        ]
        for t in summary["tuning"]
    ]
    sweep_header = [
        "model",
        "setting",
        "strength",
        "val (%)",
        "test (%)",
        "locality",
        "sharing",
        "peak",
        "live units",
        "distinct",
        "zeros",
    ]
    out = markdown_table(header, rows) + note
    if sweep:
        out += (
            "\nStrength sweep (seed 0, 3,600 train / 400 validation; test shown for reference "
            "only):\n\n" + markdown_table(sweep_header, sweep)
        )
    if summary["tuning_seeds"] > 1 and summary["grid"]:
        out += protocol.grid_table(summary["grid"], summary["tuning_seeds"], "strength")
    return out + (
        f"\nPaired comparisons over {summary['seeds']} seed(s):\n\n"
        + protocol.claims_table(summary["claims"])
    )


def _figures(ctx: Context, final, tuning, summary) -> list:
    shown = {
        "fc (shuffled, un-permuted)": final[("fc", "shuffled")][0]["_weight"],
        "fc_wsr (shuffled, un-permuted)": final[("fc_wsr", "shuffled")][0]["_weight"],
        "fc_l1 (shuffled, un-permuted)": final[("fc_l1", "shuffled")][0]["_weight"],
        "cnn conv1 as a dense matrix": final[("cnn", "original")][0]["_weight"],
    }
    figs = [plotting.heatmaps(shown, ctx.out_dir / "first_layer_heatmaps.png")]
    series = accuracy_series(summary)
    figs.append(
        plotting.grouped_bars(
            list(MODELS), series, ctx.out_dir / "accuracy.png", "test accuracy", ylim=(0.3, 1.0)
        )
    )
    if tuning:
        curves = {}
        for s in SETTINGS:
            pts = sorted((k[2], r["val_acc"]) for k, r in tuning.items() if k[:2] == ("fc_wsr", s))
            curves[f"fc_wsr, {s} (val)"] = ([p[0] for p in pts], [p[1] for p in pts], None)
        refs = {f"fc, {s} (val)": tuning[("fc", s, 0.0)]["val_acc"] for s in SETTINGS}
        refs["cnn, shuffled (test)"] = summary["models"]["cnn"]["shuffled"]["mean"]
        figs.append(
            plotting.lines(
                curves,
                ctx.out_dir / "accuracy_vs_lambda.png",
                "λ (WSR strength)",
                "accuracy",
                logx=True,
                hlines=refs,
            )
        )
    figs.append(
        plotting.value_histogram(
            {
                "fc": final[("fc", "shuffled")][0]["_weight"],
                "fc_wsr": final[("fc_wsr", "shuffled")][0]["_weight"],
            },
            ctx.out_dir / "shared_values.png",
        )
    )
    return figs
