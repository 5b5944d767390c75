"""Metrics on first-layer weight matrices: conv-likeness, distinct values, zero fraction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unshuffle_columns(weight: torch.Tensor, perm: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """Undo a pixel permutation on a first-layer matrix ``(units, C*H*W)``.

    With shuffled inputs ``x'[j] = x[perm[j]]``, column ``j`` multiplies original pixel
    ``perm[j]``; the result puts it back at ``perm[j]`` so rows can be viewed as images.
    """
    units = weight.shape[0]
    w = weight.reshape(units, channels, -1)
    out = torch.empty_like(w)
    out[:, :, perm.to(w.device)] = w
    return out.reshape(units, -1)


def locality(
    weight: torch.Tensor, image_shape: tuple[int, int, int], window: int = 3, circular: bool = False
) -> torch.Tensor:
    r"""Per-unit share of weight energy inside the best ``window x window`` patch, in [0, 1].

    For row $w_u$ centred on its median, $v_u = w_u - \operatorname{median}(w_u)$, and viewed as a
    $C \times H \times W$ image,
    $s_u = \max_{P} \sum_{(c,i,j) \in P} v_{u,c,i,j}^2 / \sum_{c,i,j} v_{u,c,i,j}^2$ over all
    ``window x window`` patches $P$ that fit in the image (all channels), or that wrap around
    it when ``circular`` (images on a torus). A unit of a ``window x window`` conv scores exactly 1;
    constant rows score 0. Centring makes the score blind to a shared background value, which
    the WSR penalty (shift-invariant) is free to choose.
    """
    c, h, w = image_shape
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    rows = rows - rows.median(dim=1, keepdim=True).values
    energy = rows.reshape(-1, c, h, w).pow(2).sum(1, keepdim=True)
    k = min(window, h, w)
    total = energy.flatten(1).sum(1)
    if circular:
        energy = F.pad(energy, (0, k - 1, 0, k - 1), mode="circular")
    patch = F.avg_pool2d(energy, k, stride=1) * (k * k)
    best = patch.flatten(1).max(1).values
    return torch.where(total > 0, best / total.clamp_min(1e-300), torch.zeros_like(total))


def conv_likeness(
    weight: torch.Tensor, image_shape: tuple[int, int, int], window: int = 3, circular: bool = False
) -> float:
    """Mean of :func:`locality` over units (rows)."""
    return float(locality(weight, image_shape, window, circular).mean())


def random_locality(
    image_shape: tuple[int, int, int], window: int = 3, circular: bool = False, units: int = 2048
) -> float:
    """The conv-likeness of i.i.d. Gaussian rows (what an untrained dense layer scores)."""
    c, h, w = image_shape
    rows = torch.randn(units, c * h * w, generator=torch.Generator().manual_seed(0))
    return conv_likeness(rows, image_shape, window, circular)
