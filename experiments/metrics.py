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


def _centred_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median-centred rows (float64) and the mask of rows that are not constant."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    rows = rows - rows.median(dim=1, keepdim=True).values
    norm = rows.norm(dim=1)
    alive = norm > 1e-12 * float(norm.max().clamp_min(1e-300))
    return rows, alive


def locality_1d(weight: torch.Tensor, window: int) -> torch.Tensor:
    r"""Per-unit share of the centred weight energy inside the best window of ``window``
    consecutive positions: $\max_p \sum_{i=p}^{p+k-1} v_{u,i}^2 / \sum_i v_{u,i}^2$, in [0, 1]
    (0 for a constant row). Rows are signals of one channel (the MNIST-1D first layer)."""
    rows, _ = _centred_rows(weight)
    energy = rows.pow(2)
    k = min(window, rows.shape[1])
    best = energy.unfold(1, k, 1).sum(-1).max(1).values
    total = energy.sum(1)
    return torch.where(total > 0, best / total.clamp_min(1e-300), torch.zeros_like(total))


def shift_sharing(
    weight: torch.Tensor, window: int, templates: int, iters: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""How well ``templates`` shifted kernels of width ``window`` explain each unit.

    Each centred row $v_u$ (normalised to unit length) is fitted by the best scaled translate of
    one of $K$ unit-norm templates $t_1..t_K \in \mathbb{R}^k$:
    $s_u = \max_{c,p} \langle v_u[p:p+k], t_c\rangle^2 / \|v_u\|^2$ (a row of a conv layer whose
    kernel is a template scores 1). The templates are fitted to the layer by alternating
    assignment and rank-one updates (a K-subspaces fit over shifts, started from the units'
    best windows), so the score is a lower bound of the best fit. Returns ``(s, templates)``;
    constant rows score 0.
    """
    rows, alive = _centred_rows(weight)
    k = min(window, rows.shape[1])
    unit = torch.where(alive[:, None], rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300), 0)
    wins = unit.unfold(1, k, 1)  # (U, P, k)
    return _fit_templates(wins, alive, locality_1d(weight, k), templates, iters)


def shift_sharing_2d(
    weight: torch.Tensor,
    image_shape: tuple[int, int, int],
    window: int,
    templates: int,
    circular: bool = True,
    iters: int = 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":func:`shift_sharing` for units that see an image: how well ``templates`` kernels of
    ``window x window`` pixels (all channels), each placed at any position (wrapping around on a
    torus when ``circular``), explain each unit. A unit of a ``window x window`` (circular) conv
    with at most ``templates`` channels scores 1. Returns ``(s, templates)``."""
    c, h, w = image_shape
    rows, alive = _centred_rows(weight)
    k = min(window, h, w)
    unit = torch.where(alive[:, None], rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300), 0)
    img = unit.reshape(-1, c, h, w)
    if circular:
        img = F.pad(img, (0, k - 1, 0, k - 1), mode="circular")
    wins = F.unfold(img, k).transpose(1, 2)  # (U, P, c*k*k)
    rank = locality(weight, image_shape, window, circular)
    return _fit_templates(wins, alive, rank, templates, iters)


def _fit_templates(
    wins: torch.Tensor, alive: torch.Tensor, rank: torch.Tensor, templates: int, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The K-subspaces fit over shifts of :func:`shift_sharing`: ``wins[u, p]`` is unit ``u``'s
    (unit-norm row's) window at position ``p``; ``rank`` orders the units for the start."""
    k = wins.shape[-1]
    live = torch.nonzero(alive).flatten()
    if len(live) == 0:
        return torch.zeros(wins.shape[0], dtype=wins.dtype), torch.zeros(templates, k)
    # start: the best windows of K units spread over the energy-share ranking
    best_p = wins.pow(2).sum(-1).argmax(1)
    order = live[torch.argsort(rank[live], descending=True)]
    pick = order[torch.linspace(0, len(order) - 1, templates).round().long()]
    t = wins[pick, best_p[pick]]
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-300)
    assign = None
    for _ in range(iters):
        proj = torch.einsum("upk,ck->upc", wins, t).pow(2)  # (U, P, K)
        flat = proj.flatten(1).argmax(1)
        if assign is not None and torch.equal(flat, assign):
            break
        assign = flat
        pos, cls = flat // templates, flat % templates
        for c in range(templates):
            members = live[cls[live] == c]
            if len(members):
                a = wins[members, pos[members]]  # (n_c, k)
                t[c] = torch.linalg.svd(a, full_matrices=False).Vh[0]
    proj = torch.einsum("upk,ck->upc", wins, t).pow(2)
    score = proj.flatten(1).max(1).values
    return torch.where(alive, score, torch.zeros_like(score)), t


def conv_likeness_1d(weight: torch.Tensor, window: int, templates: int) -> dict[str, float]:
    """Locality and shift-sharing (means over the non-constant units), the live-unit count, and
    ``peak``: the mean share of a unit's energy at its single largest position (1 for a unit that
    reads one input, ``1/k`` at least for a flat kernel of width ``k``)."""
    rows, alive = _centred_rows(weight)
    n = max(int(alive.sum()), 1)
    loc = locality_1d(weight, window)
    share, _ = shift_sharing(weight, window, templates)
    energy = rows.pow(2)
    peak = energy.max(1).values / energy.sum(1).clamp_min(1e-300)
    return {
        "locality": float(loc[alive].sum()) / n,
        "sharing": float(share[alive].sum()) / n,
        "peak": float(peak[alive].sum()) / n,
        "live_units": int(alive.sum()),
    }


def random_conv_likeness_1d(
    shape: tuple[int, int], window: int, templates: int, seeds: int = 5
) -> dict[str, float]:
    """The floor: :func:`conv_likeness_1d` of i.i.d. Gaussian layers (mean over ``seeds``)."""
    scores = [
        conv_likeness_1d(
            torch.randn(shape, generator=torch.Generator().manual_seed(s)), window, templates
        )
        for s in range(seeds)
    ]
    return {k: sum(s[k] for s in scores) / seeds for k in ("locality", "sharing")}
