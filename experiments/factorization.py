"""Deep weight factorization (DWF): depth D = 1 (plain L2), 2, 3, 4 vs global magnitude pruning
(with and without fine-tuning) at matched compression; claim "D >= 3 beats D = 2 and pruning at
high compression".

Model: MLP ``in-300-100-10`` (the LeNet-300-100 shape). Every weight matrix is factorized with
``weightshare.factorize(layer, depth=D)`` and trained with SGD (no momentum, cosine schedule) and
weight decay ``weightshare.factorization.weight_decay_for(lam, D)`` on the factors (biases: no
decay). After training the factors are collapsed with ``weightshare.collapse(threshold=...)``.
Compression ratio CR = #weights / #non-zero weights (biases excluded).

The learning rate is tuned per depth (seed 0, validation): for each lr in ``lr_grid`` a few
strengths (``tune_lams``) are trained and the lr with the best validation accuracy summed over
the ``targets`` it reaches wins (so an lr that never compresses cannot win by accuracy alone).
The fine ``lam_grid`` then runs at that lr for every seed. Pruning baselines: the dense model (no
decay, lr from ``dense_lr_grid`` on validation), globally magnitude-pruned to each target CR,
without fine-tuning and with ``finetune_epochs`` of masked fine-tuning (the pruned weights stay 0).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from . import data as datasets
from . import plotting, protocol
from ._common import Context, markdown_table, mean_std, progress, require, write_results
from .models import MLP
from .protocol import Runs, choose, summary_header
from .protocol import config_for as _config_for
from .train import TrainConfig, accuracy, fit

# geometric, ratio ~1.26 (10^0.1): the sparse regime is a narrow band for D >= 3
_FINE = [round(10 ** (e / 10), 6) for e in range(-33, -16)]  # 5.0e-4 .. 2.0e-2, 17 values
_TARGETS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": 3,
        "epochs": 90,
        "batch_size": 32,
        "hidden": [300, 100],
        "depths": [1, 2, 3, 4],
        "lr_grid": [0.1, 0.3, 0.5, 1.0],
        "tune_lams": [1e-3, 3.2e-3, 1e-2],
        "lam_grid": _FINE,
        "lam_grid_d1": _FINE[::4],  # L2 gives no sparsity: a coarse grid shows it
        "dense_lr_grid": [0.1, 0.3],
        "threshold": 1e-3,
        "targets": _TARGETS,
        "finetune_epochs": 30,
    },
    "quick": {
        "seeds": 1,
        "epochs": 60,
        "batch_size": 32,
        "hidden": [300, 100],
        "depths": [2, 3],
        "lr_grid": [0.5],
        "tune_lams": [2e-3],
        "lam_grid": [2e-3, 4e-3],
        "lam_grid_d1": [2e-3],
        "dense_lr_grid": [0.3],
        "threshold": 1e-3,
        "targets": [4, 16, 64],
        "finetune_epochs": 10,
    },
    "smoke": {
        "seeds": 1,
        "epochs": 1,
        "batch_size": 128,
        "hidden": [16],
        "depths": [1, 3],
        "lr_grid": [0.1, 0.3],
        "tune_lams": [1e-3],
        "lam_grid": [1e-3],
        "lam_grid_d1": [1e-3],
        "dense_lr_grid": [0.1],
        "threshold": 1e-3,
        "targets": [2],
        "finetune_epochs": 1,
    },
}
#: per-data-set overrides: MNIST-1D has 3,600 training signals (113 steps of 32 per epoch), so
#: 30 epochs are about the 3,060 steps of 90 digits epochs
DATASET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "mnist1d": {"full": {"epochs": 30, "finetune_epochs": 10}, "quick": {"epochs": 20}},
    # LeNet-300-100 on the 5,000 bundled digits, with the protocol of EXP-7
    "mnist5k": {
        "full": {  # reduced to fit a shared 2-core machine: see the page
            "seeds": 5,
            "tuning_seeds": 3,
            "epochs": 30,
            "depths": [1, 2, 3, 4],
            "lr_grid": [0.3, 1.0],
            "tune_lams": [1e-3, 3.2e-3],
            "lam_grid": _FINE[::3],
            "targets": [16, 128],
            "claim_target": 128,
            "finetune_epochs": 5,
        },
        "quick": {"tuning_seeds": 1, "seeds": 2, "claim_target": 16},
        "smoke": {
            "seeds": 2,
            "tuning_seeds": 2,
            "depths": [2, 3],
            "lr_grid": [0.1],
            "targets": [1, 2],
            "claim_target": 1,
        },
    },
}


def config_for(preset: str, dataset: str) -> dict[str, Any]:
    return _config_for(CONFIGS, preset, dataset, DATASET_OVERRIDES)


def _weights(model: MLP) -> list[torch.Tensor]:
    return [layer.weight for layer in model.layers()]


def run(ctx: Context, cfg: dict[str, Any]) -> tuple[dict[str, Any], str, list]:
    ws = require("weightshare", "factorize", "collapse", experiment=ctx.name)
    fac = require(
        "weightshare.factorization",
        "weight_decay_for",
        "compression_ratio",
        "factors",
        experiment=ctx.name,
    )
    split = datasets.load(ctx.dataset, ctx.data_dir).to(ctx.device)
    data = protocol.split_by_seed(ctx, split, ("mnist5k",))  # mnist5k: validation by seed

    c, h, w = split.image_shape
    n_in = c * h * w

    def build(depth: int, seed: int) -> MLP:
        torch.manual_seed(seed)
        model = MLP(n_in, cfg["hidden"], split.num_classes).to(ctx.device)
        if depth:
            gen = torch.Generator(ctx.device).manual_seed(seed)
            for layer in model.layers():
                ws.factorize(layer, "weight", depth=depth, generator=gen)
        return model

    def optimizer(depth: int, lam: float):
        def make(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
            decayed = [p for layer in model.layers() for p in fac.factors(layer)] if depth else []
            ids = {id(p) for p in decayed}
            rest = [p for p in model.parameters() if id(p) not in ids]
            groups = [{"params": rest, "weight_decay": 0.0}]
            if decayed:
                groups.append({"params": decayed, "weight_decay": fac.weight_decay_for(lam, depth)})
            return torch.optim.SGD(groups, lr=t.lr, momentum=0.0)

        return make

    def go(depth: int, lr: float, lam: float, seed: int) -> tuple[dict[str, Any], MLP]:
        model = build(depth, seed)
        tcfg = TrainConfig(cfg["epochs"], lr, cfg["batch_size"], momentum=0.0)
        split = data(seed)
        res = fit(model, split, tcfg, seed=seed, optimizer=optimizer(depth, lam))
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        if not finite:  # diverged: no compression is claimed for it
            res.update(depth=depth, lr=lr, lam=lam, seed=seed, cr=math.nan, diverged=True)
            return res, model
        if depth:
            for layer in model.layers():
                ws.collapse(layer, "weight", threshold=cfg["threshold"])
        res.update(
            depth=depth,
            lr=lr,
            lam=lam,
            seed=seed,
            cr=float(fac.compression_ratio(_weights(model))),
            val_acc=accuracy(model, split.x_val, split.y_val),
            test_acc=accuracy(model, split.x_test, split.y_test),
        )
        return res, model

    def lams(depth: int) -> list[float]:
        return cfg["lam_grid_d1"] if depth == 1 else cfg["lam_grid"]

    if cfg.get("tuning_seeds"):  # the protocol of EXP-7 (mnist5k)
        return _protocol_run(ctx, cfg, go, build, data, fac, lams)

    # 1. the learning rate per depth (seed 0, validation); DWF runs are keyed by depth, (lr, lam)
    runs = Runs(lambda depth, value, seed: go(depth, *value, seed)[0], ctx)
    chosen_lr: dict[int, float] = {}
    for depth in cfg["depths"]:
        if len(cfg["lr_grid"]) == 1:
            chosen_lr[depth] = cfg["lr_grid"][0]
            continue
        jobs = [(depth, (lr, lam), 0) for lr in cfg["lr_grid"] for lam in cfg["tune_lams"]]
        runs.all(jobs, f"tune lr D={depth}")
        chosen_lr[depth] = choose(
            cfg["lr_grid"],
            lambda lr, d=depth: _lr_score(cfg, [runs(d, (lr, lam), 0) for lam in cfg["tune_lams"]]),
            tie="smaller",
        )

    # 2. the fine strength grid at that learning rate, every seed
    jobs = [
        (d, (chosen_lr[d], lam), s)
        for s in range(ctx.seeds)
        for d in cfg["depths"]
        for lam in lams(d)
    ]
    runs.all(jobs, "DWF runs")
    dwf = [runs(*job) for job in jobs]
    tuning = [
        {k: r[k] for k in ("depth", "lr", "lam", "cr", "val_acc", "test_acc")}
        for (_, (_, lam), seed), r in runs.results.items()
        if seed == 0 and lam in cfg["tune_lams"]
    ]

    # 3. magnitude pruning of the dense model, without and with masked fine-tuning
    pruned: list[dict[str, Any]] = []
    for s in progress(range(ctx.seeds), ctx, "pruning"):
        dense_runs = [go(0, lr, 0.0, s) for lr in cfg["dense_lr_grid"]]
        base_res, base = max(dense_runs, key=lambda rm: rm[0]["val_acc"])
        for target in cfg["targets"]:
            model = copy.deepcopy(base)
            weights = [(layer, "weight") for layer in model.layers()]
            prune.global_unstructured(
                weights, pruning_method=prune.L1Unstructured, amount=1.0 - 1.0 / target
            )
            row = {"target": target, "seed": s, "lr": base_res["lr"]}
            pruned.append({**row, **_evaluate(model, split, fac, finetuned=False)})
            # fine-tune with the masks in place (the pruned weights get no update), then remove
            tcfg = TrainConfig(cfg["finetune_epochs"], base_res["lr"], cfg["batch_size"], 0.0)
            fit(model, split, tcfg, seed=1000 + s)
            for layer, name in weights:
                prune.remove(layer, name)
            pruned.append({**row, **_evaluate(model, split, fac, finetuned=True)})

    matched = _matched(cfg, ctx.seeds, dwf, pruned)
    summary = {
        **summary_header(ctx, split.sizes, cfg),
        "chosen_lr": {str(d): lr for d, lr in chosen_lr.items()},
        "lr_tuning": tuning,
        "matched": matched,
        "dwf_runs": dwf,
        "pruning_runs": pruned,
    }
    table = _table(cfg, matched, ctx, split, chosen_lr)
    figures = [_figure(ctx, cfg, dwf, pruned)]
    write_results(ctx, summary, table)
    return summary, table, figures


def _evaluate(model: MLP, split: datasets.Split, fac: Any, *, finetuned: bool) -> dict[str, Any]:
    """Accuracy and CR of a pruned model (its masks, if any, are applied by the forward)."""
    return {
        "finetuned": finetuned,
        "cr": float(fac.compression_ratio(_weights(model))),
        "val_acc": accuracy(model, split.x_val, split.y_val),
        "test_acc": accuracy(model, split.x_test, split.y_test),
    }


def _lr_score(cfg: dict[str, Any], runs: list[dict[str, Any]]) -> float:
    """Sum over the targets of the best validation accuracy among runs reaching that CR."""
    score = 0.0
    for target in cfg["targets"]:
        ok = [r["val_acc"] for r in runs if math.isfinite(r["cr"]) and r["cr"] >= target]
        score += max(ok, default=0.0)
    return score


def _pruning_name(finetuned: bool) -> str:
    return "magnitude pruning + fine-tuning" if finetuned else "magnitude pruning"


def _method(depth: int) -> str:
    return "L2 (D=1)" if depth == 1 else f"DWF D={depth}"


def _matched(cfg, seeds, dwf, pruned) -> dict[str, dict[str, Any]]:
    """Per method and target CR: per seed, the run with CR >= target and the best validation
    accuracy (selection on validation only); test accuracy mean ± std over seeds that reach it."""
    out: dict[str, dict[str, Any]] = {}
    for depth in cfg["depths"]:
        per_target = {}
        for target in cfg["targets"]:
            picks = []
            for s in range(seeds):
                ok = [
                    r for r in dwf if r["depth"] == depth and r["seed"] == s and r["cr"] >= target
                ]
                if ok:
                    picks.append(max(ok, key=lambda r: (r["val_acc"], r["cr"])))
            per_target[str(target)] = {
                **(mean_std([p["test_acc"] for p in picks]) if picks else {"mean": None}),
                "reached": len(picks),
                "picks": [{k: p[k] for k in ("lr", "lam", "cr", "seed")} for p in picks],
            }
        out[_method(depth)] = per_target
    for finetuned in (False, True):
        out[_pruning_name(finetuned)] = {
            str(t): {
                **mean_std(
                    [
                        p["test_acc"]
                        for p in pruned
                        if p["target"] == t and p["finetuned"] == finetuned
                    ]
                ),
                "reached": seeds,
            }
            for t in cfg["targets"]
        }
    return out


def _table(cfg, matched, ctx, split, chosen_lr) -> str:
    rows = []
    for method, per_target in matched.items():
        cells = []
        for t in cfg["targets"]:
            e = per_target[str(t)]
            if e["mean"] is None:
                cells.append("—")
            else:
                part = "" if e["reached"] == ctx.seeds else f" ({e['reached']}/{ctx.seeds})"
                cells.append(f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}{part}")
        rows.append([method, *cells])
    header = ["method", *[f"CR ≥ {t}" for t in cfg["targets"]]]
    lrs = ", ".join(f"D={d}: {lr:g}" for d, lr in chosen_lr.items())
    return markdown_table(header, rows) + (
        f"\nTest accuracy (%) at matched compression; MLP {'-'.join(map(str, cfg['hidden']))} on "
        f"{ctx.dataset} (split {split.sizes}), {cfg['epochs']} epochs; learning rate per depth "
        f"(from {cfg['lr_grid']} on validation, seed 0): {lrs}; λ from "
        f"{min(cfg['lam_grid']):g} to {max(cfg['lam_grid']):g} ({len(cfg['lam_grid'])} values, "
        f"{len(cfg['lam_grid_d1'])} for D=1) picked on validation per seed; collapse threshold "
        f"{cfg['threshold']:g}; pruning fine-tuned for {cfg['finetune_epochs']} epochs; "
        f"mean ± std over {ctx.seeds} seed(s) ('k/n': only k seeds reached that CR; '—': "
        "none).\n"
    )


def _figure(ctx, cfg, dwf, pruned):
    """Accuracy against CR: per depth one point per λ (mean over seeds; CR as geometric mean),
    the band is ± one std of the test accuracy over seeds; pruning per target CR."""
    series = {}
    for depth in cfg["depths"]:
        pts = []
        for lam in sorted({r["lam"] for r in dwf if r["depth"] == depth}):
            rs = [r for r in dwf if r["depth"] == depth and r["lam"] == lam]
            rs = [r for r in rs if math.isfinite(r["cr"])]
            if rs:
                cr = math.exp(sum(math.log(r["cr"]) for r in rs) / len(rs))
                ms = mean_std([r["test_acc"] for r in rs])
                pts.append((cr, ms["mean"], ms["std"]))
        series[_method(depth)] = pts
    for finetuned in (False, True):
        pts = []
        for t in cfg["targets"]:
            ms = mean_std(
                [p["test_acc"] for p in pruned if p["target"] == t and p["finetuned"] == finetuned]
            )
            pts.append((float(t), ms["mean"], ms["std"]))
        series[_pruning_name(finetuned)] = pts
    return plotting.bands(
        series,
        ctx.out_dir / "accuracy_vs_compression.png",
        "compression ratio (CR)",
        "test accuracy",
    )


# --- the protocol of EXP-7 (mnist5k): tuning by the mean over seeds, paired claims -------------


def _mean(values: Any) -> float:
    return round(float(np.mean(list(values))), 10)


def _masked_at_init(model: MLP, target: int, split: datasets.Split, how: str) -> None:
    """Prune ``model`` (untrained) to compression ``target`` with a fixed mask: ``random`` or
    ``snip`` (Lee et al. 2019: keep the weights of largest |gradient x weight| on one batch)."""
    weights = [layer.weight for layer in model.layers()]
    if how == "snip":
        model.zero_grad()
        batch = slice(0, 512)
        loss = nn.functional.cross_entropy(model(split.x_train[batch]), split.y_train[batch])
        loss.backward()
        scores = [(w.grad * w).abs().detach() for w in weights]
        model.zero_grad()
    else:
        gen = torch.Generator().manual_seed(12345)
        scores = [torch.rand(w.shape, generator=gen).to(w.device) for w in weights]
    flat = torch.cat([sc.flatten() for sc in scores])
    keep = max(1, round(len(flat) / target))
    cut = torch.topk(flat, keep).values[-1]
    for layer, sc in zip(model.layers(), scores, strict=True):
        prune.custom_from_mask(layer, "weight", sc >= cut)


def _protocol_run(ctx, cfg, go, build, data, fac, lams) -> tuple[dict[str, Any], str, list]:
    tseeds = list(range(cfg["tuning_seeds"]))
    runs = Runs(lambda depth, value, seed: go(depth, *value, seed)[0], ctx)
    # 1. the learning rate per depth: the mean over the tuning seeds of the lr score
    chosen_lr: dict[int, float] = {}
    for d in cfg["depths"]:
        jobs = [
            (d, (lr, lam), s) for lr in cfg["lr_grid"] for lam in cfg["tune_lams"] for s in tseeds
        ]
        runs.all(jobs, f"tune lr D={d}")
        chosen_lr[d] = choose(
            cfg["lr_grid"],
            lambda lr, d=d: _mean(
                _lr_score(cfg, [runs(d, (lr, lam), s) for lam in cfg["tune_lams"]]) for s in tseeds
            ),
            tie="smaller",
        )
    # 2. the strength grid at that lr on the tuning seeds; per (depth, target CR) the strength of
    # best mean validation accuracy among those that reach the target on every tuning seed
    runs.all(
        ((d, (chosen_lr[d], lam), s) for d in cfg["depths"] for lam in lams(d) for s in tseeds),
        "grid",
    )
    grid = [
        {
            "depth": d,
            "lr": chosen_lr[d],
            "lam": lam,
            "val": [runs(d, (chosen_lr[d], lam), s)["val_acc"] for s in tseeds],
            "cr": [runs(d, (chosen_lr[d], lam), s)["cr"] for s in tseeds],
        }
        for d in cfg["depths"]
        for lam in lams(d)
    ]
    for g in grid:
        g.update(val_mean=float(np.mean(g["val"])), val_std=float(np.std(g["val"])))
    picks: dict[tuple[str, int], float] = {}
    for d in cfg["depths"]:
        for t in cfg["targets"]:
            ok = [g for g in grid if g["depth"] == d and all(c >= t for c in g["cr"])]
            if ok:
                best = choose(
                    [g["lam"] for g in ok],
                    lambda lam, d=d: _mean(
                        runs(d, (chosen_lr[d], lam), s)["val_acc"] for s in tseeds
                    ),
                )
                picks[(_method(d), t)] = best
    # 3. the picks on every seed
    final: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for (method, t), lam in progress(list(picks.items()), ctx, "final"):
        d = next(d for d in cfg["depths"] if _method(d) == method)
        final[(method, t)] = [runs(d, (chosen_lr[d], lam), s) for s in range(ctx.seeds)]
    # 4. the baselines on every seed: the dense model (lr by the mean over the tuning seeds),
    # magnitude-pruned without and with fine-tuning; random and SNIP masks at initialisation
    dense: dict[tuple[float, int], tuple[dict[str, Any], MLP]] = {}
    for lr in cfg["dense_lr_grid"]:
        for s in tseeds:
            dense[(lr, s)] = go(0, lr, 0.0, s)
    dense_lr = choose(
        cfg["dense_lr_grid"],
        lambda lr: _mean(dense[(lr, s)][0]["val_acc"] for s in tseeds),
        "smaller",
    )
    baselines: list[dict[str, Any]] = []
    for s in progress(range(ctx.seeds), ctx, "baselines"):
        split = data(s)
        if (dense_lr, s) not in dense:
            dense[(dense_lr, s)] = go(0, dense_lr, 0.0, s)
        base = dense[(dense_lr, s)][1]
        for t in cfg["targets"]:
            row = {"target": t, "seed": s, "lr": dense_lr}
            model = copy.deepcopy(base)
            weights = [(layer, "weight") for layer in model.layers()]
            prune.global_unstructured(
                weights, pruning_method=prune.L1Unstructured, amount=1.0 - 1.0 / t
            )
            res = _evaluate(model, split, fac, finetuned=False)
            baselines.append({**row, **res, "method": _pruning_name(False)})
            ft = TrainConfig(cfg["finetune_epochs"], dense_lr, cfg["batch_size"], 0.0)
            fit(model, split, ft, seed=1000 + s)
            for layer, name in weights:
                prune.remove(layer, name)
            res = _evaluate(model, split, fac, finetuned=True)
            baselines.append({**row, **res, "method": _pruning_name(True)})
            for how in ("random", "snip"):
                model = build(0, s)
                _masked_at_init(model, t, split, how)
                full = TrainConfig(cfg["epochs"], dense_lr, cfg["batch_size"], 0.0)
                fit(model, split, full, seed=s)
                for layer in model.layers():
                    prune.remove(layer, "weight")
                res = _evaluate(model, split, fac, finetuned=False)
                name = "random pruning at init" if how == "random" else "SNIP at init"
                baselines.append({**row, **res, "method": name})
    for b in baselines:
        final.setdefault((b["method"], b["target"]), []).append(b)

    claims = []
    t = cfg["claim_target"]
    for d in (d for d in cfg["depths"] if d >= 3):
        for control in ("DWF D=2", _pruning_name(True), "SNIP at init"):
            a, b = final.get((_method(d), t), []), final.get((control, t), [])
            n = min(len(a), len(b))
            c = protocol.claim(
                f"{_method(d)} beats {control} at CR ≥ {t}",
                _method(d),
                control,
                [r["test_acc"] for r in a][:n],
                [r["test_acc"] for r in b][:n],
                diverged=(
                    [protocol.is_diverged(r) for r in a][:n],
                    [protocol.is_diverged(r) for r in b][:n],
                ),
            )
            if not a:
                c["note"] = f"no strength reaches CR ≥ {t} on every tuning seed"
            claims.append(c)
    cells = {
        f"{m} @ {tt}": {
            **mean_std([r["test_acc"] for r in rs]),
            "cr": mean_std([r["cr"] for r in rs]),
            "lam": rs[0].get("lam"),
        }
        for (m, tt), rs in final.items()
    }
    summary = {
        **summary_header(ctx, data(0).sizes, cfg),
        "tuning_seeds": len(tseeds),
        "chosen_lr": {str(d): lr for d, lr in chosen_lr.items()},
        "dense_lr": dense_lr,
        "grid": grid,
        "picks": {f"{m} @ {tt}": lam for (m, tt), lam in picks.items()},
        "matched": cells,
        "claims": claims,
        "dwf_runs": [r for (m, _), rs in final.items() if m.startswith(("DWF", "L2")) for r in rs],
        "pruning_runs": baselines,
    }
    table = protocol_table(summary)
    fig = compression_figure(ctx.out_dir, final, cfg["targets"])
    write_results(ctx, summary, table)
    return summary, table, [fig]


def _cr_cell(runs: list[dict[str, Any]]) -> str:
    """The CR reached per seed, ``–`` for a diverged network (never averaged through a NaN)."""
    crs = [r.get("cr") for r in runs]
    ok = [c for c in crs if c is not None and math.isfinite(c)]
    if len(ok) == len(crs):
        return f"CR {sum(ok) / len(ok):.0f}"
    each = "/".join("–" if c is None or not math.isfinite(c) else f"{c:.0f}" for c in crs)
    return f"CR per seed {each}"


def final_runs(summary: dict[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The final runs by ``(method, target)``, rebuilt from a protocol ``summary.json``: every
    pick's DWF runs (one per seed) and the pruning baselines."""
    final: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for key, lam in summary["picks"].items():
        method, target = key.rsplit(" @ ", 1)
        by_seed = {
            r["seed"]: r
            for r in summary["dwf_runs"]
            if _method(r["depth"]) == method and r["lam"] == lam
        }
        final[(method, int(target))] = [by_seed[k] for k in sorted(by_seed)]
    for b in summary["pruning_runs"]:
        final.setdefault((b["method"], b["target"]), []).append(b)
    return final


def protocol_table(summary: dict[str, Any]) -> str:
    """The page's table of a protocol run, from its ``summary.json`` alone: test accuracy per
    (method, CR target) with the CR reached (per seed where a network diverged), then the
    paired claims and the count of diverged runs per method."""
    cfg, seeds = summary["config"], summary["seeds"]
    final = final_runs(summary)
    rows = []
    for m in dict.fromkeys(m for m, _ in final):
        row = [m]
        for tt in cfg["targets"]:
            rs = final.get((m, tt))
            if not rs:
                row.append("—")
                continue
            ms = mean_std([r["test_acc"] for r in rs])
            row.append(f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f} ({_cr_cell(rs)})")
        dead = {id(r): r for tt in cfg["targets"] for r in final.get((m, tt), [])}
        n_dead = sum(protocol.is_diverged(r) for r in dead.values())
        rows.append([*row, f"{n_dead} of {len(dead)}"])
    lrs = ", ".join(f"D={d}: {lr:g}" for d, lr in summary["chosen_lr"].items())
    header = ["method", *[f"CR ≥ {tt}" for tt in cfg["targets"]], "diverged runs"]
    return (
        markdown_table(header, rows)
        + f"\nTest accuracy (%) mean ± std over {seeds} seeds (mean CR reached in brackets; "
        "per seed, – for a diverged network, where a network diverged); "
        f"MLP {'-'.join(map(str, cfg['hidden']))} on {summary['dataset']}, {cfg['epochs']} epochs; "
        f"strength per (method, CR) and lr per depth ({lrs}; dense {summary['dense_lr']:g}) chosen "
        f"by the mean validation accuracy over {summary['tuning_seeds']} tuning seeds.\n"
        f"\nPaired comparisons over {seeds} seeds:\n\n" + protocol.claims_table(summary["claims"])
    )


def compression_figure(out_dir, final, targets) -> Any:
    """Test accuracy against the CR reached (geometric mean over the seeds whose network is
    alive), with seed bands, per method; ``final[(method, target)]`` holds the runs."""
    series = {}
    for m in dict.fromkeys(m for m, _ in final):
        pts = []
        for tt in targets:
            rs = [r for r in final.get((m, tt), []) if math.isfinite(r["cr"]) and r["cr"] > 0]
            if rs:
                cr = math.exp(sum(math.log(r["cr"]) for r in rs) / len(rs))
                ms = mean_std([r["test_acc"] for r in rs])
                pts.append((cr, ms["mean"], ms["std"]))
        series[m] = pts
    return plotting.bands(
        series, out_dir / "accuracy_vs_compression.png", "compression ratio (CR)", "test accuracy"
    )
