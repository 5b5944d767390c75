"""What the checks compare with: the reference prox, and assertions on values, layouts, errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from weightshare import reference as ref

TOL = {"rtol": 1e-9, "atol": 1e-9}


def ref_prox(w: torch.Tensor, lam: Any, dim: int | None) -> torch.Tensor:
    """The reference prox (PAVA) of the whole tensor or of every slice along ``dim``."""
    a = w.detach().cpu().double().numpy()
    if dim is None:
        return torch.from_numpy(ref.prox_pava(a.ravel(), float(lam)).reshape(a.shape))
    moved = np.moveaxis(a, dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    lams = np.broadcast_to(np.asarray(lam, dtype=np.float64), moved.shape[:-1]).ravel()
    out = np.stack([ref.prox_pava(r, lam_r) for r, lam_r in zip(rows, lams, strict=True)])
    return torch.from_numpy(np.moveaxis(out.reshape(moved.shape), -1, dim).copy())


def close(got: Any, want: torch.Tensor, what: str) -> None:
    """``got`` (a DTensor's full tensor) equals ``want`` within the float64 tolerance."""
    if isinstance(got, DTensor):
        got = got.full_tensor()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(
        got.detach().cpu().double(), want.double(), rtol=TOL["rtol"], atol=TOL["atol"] * scale,
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


def same_layout(out: Any, x: DTensor, what: str) -> None:
    """``out`` is a DTensor with the mesh and the placements of ``x``."""
    assert isinstance(out, DTensor), f"{what}: got {type(out).__name__}, not a DTensor"
    assert out.placements == x.placements, f"{what}: placements {out.placements} != {x.placements}"
    assert out.device_mesh == x.device_mesh, f"{what}: another mesh"


def expect_raise(exc: type[Exception], match: str, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` raises ``exc`` with a message that ``match`` (a regex) finds."""
    try:
        fn(*args)
    except exc as e:
        assert re.search(match, str(e)), f"{exc.__name__} without {match!r}: {e}"
    else:
        raise AssertionError(f"{fn.__name__}{args[1:]} did not raise {exc.__name__}")
