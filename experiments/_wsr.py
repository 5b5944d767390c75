"""What the two halves of ``shuffled-pixels`` (images: :mod:`experiments.shuffled_pixels`;
MNIST-1D: :mod:`experiments.shuffled_1d`) share: the models compared, the regulariser hooks, the
first-layer statistics and the per-model summary entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import protocol
from ._common import mean_std, public
from .protocol import attach_strengths

MODELS = ("fc", "fc_wsr", "fc_l1", "cnn")
REGULARISED = {"fc_wsr": "lam_grid", "fc_l1": "l1_grid"}  # model -> its strength grid
SETTINGS = ("original", "shuffled")
PERMUTATION_SEED = 1234


def regulariser_hook(
    model_name: str, params: Sequence[torch.Tensor], lam: float, ratio: float = 1.0
) -> Any:
    """The ``fit`` hook of a regularised model, or None: ``fc_l1`` soft-thresholds ``params``
    at ``lam`` (the control, no sharing); every other name gets the WSR prox at ``lam`` on the
    first of ``params`` and ``lam * ratio`` on the others (the official torus ratio is 1/10)."""
    if model_name == "fc_l1":
        return lambda opt: attach_strengths(opt, dict.fromkeys(params, 0.0), l1=lam)
    lams = {p: lam if i == 0 else lam * ratio for i, p in enumerate(params)}
    return lambda opt: attach_strengths(opt, lams)


def layer_stats(ws: Any, weight: torch.Tensor) -> dict[str, Any]:
    """Distinct values, zero fraction and size of a (first-layer) weight matrix."""
    return {
        "num_distinct": int(ws.num_distinct(weight)),
        "zero_fraction": float(ws.zero_fraction(weight)),
        "num_weights": int(weight.numel()),
    }


def model_entry(rs: list[dict[str, Any]], scores: Sequence[str], **extra: Any) -> dict[str, Any]:
    """One (model, setting) cell of ``summary["models"]``: test accuracy, validation and each of
    ``scores`` as mean ± std over the runs ``rs``, plus ``extra`` and the runs themselves."""
    return {
        **mean_std([r["test_acc"] for r in rs]),
        "val": mean_std([r["val_acc"] for r in rs]),
        **extra,
        **{k: mean_std([r[k] for r in rs]) for k in scores},
        "num_weights": rs[0]["num_weights"],
        "runs": [public(r) for r in rs],
    }


def accuracy_series(summary: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per setting, (mean, std) test accuracy of each model, for :func:`plotting.grouped_bars`."""
    return {
        s: [(summary["models"][m][s]["mean"], summary["models"][m][s]["std"]) for m in MODELS]
        for s in SETTINGS
    }


def claims(final: dict[tuple[str, str], list[dict[str, Any]]], score: str) -> list[dict]:
    """The paired comparisons of the WSR claims: test accuracy in points, and the first layer's
    ``score`` x 100 (``sharing`` where a shift-sharing score exists, else ``conv_likeness``)."""

    def of(m: str, s: str, key: str = "test_acc") -> list[float]:
        return [r[key] for r in final[(m, s)]]

    def div(m: str, c: str, s: str) -> tuple[list[bool], list[bool]]:
        flags = [[protocol.is_diverged(r) for r in final[(x, s)]] for x in (m, c)]
        return flags[0], flags[1]

    out = []
    for s in SETTINGS:
        for control in ("fc", "fc_l1"):
            text = f"FC+WSR beats {'FC' if control == 'fc' else 'the l1 control'} ({s})"
            out.append(
                protocol.claim(
                    text,
                    "fc_wsr",
                    control,
                    of("fc_wsr", s),
                    of(control, s),
                    diverged=div("fc_wsr", control, s),
                )
            )
    wsr, cnn = of("fc_wsr", "shuffled"), of("cnn", "shuffled")
    out.append(
        protocol.claim(
            "FC+WSR beats the CNN on shuffled pixels",
            "fc_wsr",
            "cnn",
            wsr,
            cnn,
            diverged=div("fc_wsr", "cnn", "shuffled"),
        )
    )
    what = {
        "sharing": "shared across positions (shift-sharing x 100)",
        "conv_likeness": "local (locality x 100)",
    }[score]
    for control in ("fc", "fc_l1"):
        out.append(
            protocol.claim(
                f"the first layer of FC+WSR is more {what} than {control}'s (original)",
                "fc_wsr",
                control,
                of("fc_wsr", "original", score),
                of(control, "original", score),
                diverged=div("fc_wsr", control, "original"),
            )
        )
    return out
