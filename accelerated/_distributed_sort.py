r"""The distributed prox of vectors split across the ranks of one mesh dimension (DIST-4).

One vector (``dim=None``, or a 1-D tensor): sample sort (all-to-all) so that each rank holds a
contiguous range of the global order, the ramp with global ranks, PAVA on each range, then
$\lceil\log_2 P\rceil$ levels of merges of neighbouring groups of ranges, and the inverse
all-to-all. Merging groups $A$ (left) and $C$ (right) whose solutions $u$ are non-decreasing
replaces the values of $A$ above $\mu^*$ and those of $C$ below it by $\mu^*$, the root of
$h(\mu) = \sum_A (u - \mu)_+ - \sum_C (\mu - u)_+$ (the bridge of their lower hulls); the root is
bracketed by rounds of shared candidate values. Every rank computes every $\mu^*$ from the same
gathered numbers, so equal values stay equal across ranks.

Batched vectors (``dim=k`` on ``Shard(k)`` with other dimensions): an all-to-all re-shards the
local block along another dimension, the local prox runs on whole vectors, and the inverse
all-to-all brings the result back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import _checks as checks
from . import _methods as methods
from ._distributed_layout import wrap
from ._isotonic import kernel
from ._prox import prox_unchecked

#: Regular samples per rank for the splitters.
SAMPLES = 32
#: Candidate values per rank and round of a merge.
CANDIDATES = 64


def prox_sharded(
    v: Any, lam: checks.Lam, dim: int | None, method: str, mesh_dim: int
) -> torch.Tensor:
    """The prox of a ``DTensor`` whose vectors are split by mesh dimension ``mesh_dim`` only."""
    group = v.device_mesh.get_group(mesh_dim)
    local = v.to_local()
    if dim is None or v.dim() == 1:
        method = methods.resolve_method(method, local)
        out = _prox_vector(local.reshape(-1), float(lam), group, method).reshape(local.shape)
    else:
        bad = int((~torch.isfinite(local)).sum()) if checks.should_validate(local) else 0
        bads = _all_gather(torch.tensor([bad], device=local.device), group)
        if bads.any():  # every rank raises alike, before any rank waits in an all-to-all
            raise checks.nonfinite("v", int(bads.sum()))
        whole, back = _whole_vectors(local, dim, v.shape[dim], group)
        out = back(prox_unchecked(whole, lam, dim, method))
    return wrap(out, v, v.placements, v.shape)


# ---------------------------------------------------------------------------------------------
# Batched vectors: re-shard along another dimension.


def _chunks(n: int, parts: int) -> list[int]:
    """The sizes of ``torch.chunk(range(n), parts)`` padded with zeros to ``parts`` entries."""
    step = -(-n // parts) if n else 0
    return [max(0, min(step, n - q * step)) for q in range(parts)]


def _whole_vectors(local: torch.Tensor, dim: int, length: int, group: Any) -> tuple[Any, Any]:
    """Whole vectors along ``dim`` for a piece of another dimension, and the way back."""
    p, me = dist.get_world_size(group), dist.get_rank(group)
    other = max((d for d in range(local.dim()) if d != dim), key=lambda d: local.shape[d])
    pieces = _chunks(local.shape[other], p)
    rows = _chunks(length, p)  # every rank's extent along dim (DTensor's uneven Shard)
    starts = np.cumsum([0, *pieces])
    send = torch.cat([local.narrow(other, int(starts[q]), pieces[q]).reshape(-1) for q in range(p)])
    numel = int(np.prod([s for d, s in enumerate(local.shape) if d not in (dim, other)]))
    recv_counts = [rows[s] * pieces[me] * numel for s in range(p)]
    send_counts = [local.shape[dim] * pieces[q] * numel for q in range(p)]
    recv = _all_to_all(send, send_counts, recv_counts, group)
    shape = list(local.shape)
    shape[other] = pieces[me]
    blocks = []
    for s, part in enumerate(recv.split(recv_counts)):
        shape[dim] = rows[s]
        blocks.append(part.reshape(shape))
    whole = torch.cat(blocks, dim=dim)

    def back(out: torch.Tensor) -> torch.Tensor:
        parts = [b.reshape(-1) for b in out.split(rows, dim=dim)]
        home = _all_to_all(torch.cat(parts), recv_counts, send_counts, group)
        res = []
        for q, part in enumerate(home.split(send_counts)):
            shape_q = list(local.shape)
            shape_q[other] = pieces[q]
            res.append(part.reshape(shape_q))
        return torch.cat(res, dim=other)

    return whole, back


def _all_to_all(
    send: torch.Tensor, send_counts: list[int], recv_counts: list[int], group: Any
) -> torch.Tensor:
    recv = send.new_empty(sum(recv_counts))
    dist.all_to_all_single(recv, send.contiguous(), recv_counts, send_counts, group=group)
    return recv


def _all_gather(row: torch.Tensor, group: Any) -> torch.Tensor:
    """``(P, len(row))``: every rank's ``row``."""
    out = row.new_empty(dist.get_world_size(group) * row.numel())
    # all_gather_single is torch >= 2.12's name for all_gather_into_tensor (which 2.13 deprecates)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, row.contiguous(), group=group)
    return out.reshape(-1, row.numel())


# ---------------------------------------------------------------------------------------------
# One vector: sample sort, local PAVA, merges.


def _prox_vector(x: torch.Tensor, lam: float, group: Any, method: str) -> torch.Tensor:
    """The prox of the vector whose parts the ranks of ``group`` hold (this rank: ``x``)."""
    p, me = dist.get_world_size(group), dist.get_rank(group)
    n = x.numel()
    xs, perm = torch.sort(x, stable=True)
    # 1. samples (value, rank, index) and shard sizes, with the NaN/inf count, in one all-gather
    idx = ((torch.arange(SAMPLES, dtype=torch.float64) + 0.5) * n / SAMPLES).long()
    idx = idx.clamp_max(max(n - 1, 0)).to(x.device)
    bad = int((~torch.isfinite(x)).sum()) if checks.should_validate(x) else 0
    head = torch.tensor([n, bad], dtype=torch.float64, device=x.device)
    ends = xs[[0, -1]].double() if n else torch.tensor([math.inf, -math.inf], device=x.device)
    values = xs[idx].double() if n else torch.zeros(SAMPLES, dtype=torch.float64, device=x.device)
    info = _all_gather(torch.cat([head, ends.double(), values, idx.double()]), group).cpu().numpy()
    sizes, bads = info[:, 0].astype(np.int64), info[:, 1]
    if bads.any():
        raise checks.nonfinite("v", int(bads.sum()))
    d = int(sizes.sum())
    # PROX-21: every λ >= max - min collapses the vector; clamped, the ramp stays of its size
    lam = min(lam, float(info[:, 3].max() - info[:, 2].min())) if d else lam
    if d < 2 or lam == 0.0:
        return x.clone()
    # 2. splitters at the weighted quantiles of the samples; this rank's runs; all-to-all
    splitters = _splitters(info[:, 4 : 4 + SAMPLES], info[:, 4 + SAMPLES :], sizes, p)
    cuts = [0, *(_position(xs, s, me) for s in splitters), n]
    send = np.diff(cuts).tolist()
    counts = _all_gather(torch.tensor(send, dtype=torch.int64, device=x.device), group).cpu()
    recv_counts = counts[:, me].tolist()
    got = _all_to_all(xs, send, recv_counts, group)
    del xs  # (temporaries are freed as soon as possible: the peak memory is per rank)
    y, merge = torch.sort(got, stable=True)  # runs in rank order: the global key order
    del got
    m = y.numel()
    offset = int(counts[:, :me].sum())
    # 3. ramp with global ranks, 4. PAVA on the range
    z = y.to(torch.float64)
    del y
    ramp = torch.arange(offset + 1, offset + m + 1, dtype=torch.float64, device=x.device)
    z.sub_(ramp.mul_(2.0).sub_(d + 1.0).mul_(lam / (d - 1.0)))
    del ramp
    u = kernel(method)(z.reshape(1, m)).reshape(m) if m else z
    del z
    # 5. merges of neighbouring groups of ranges (in place)
    _merge_levels(u, group)
    # 6. back to the owners, in their sorted order, then unsorted
    out_sorted = torch.empty(m, dtype=x.dtype, device=x.device)
    out_sorted[merge] = u.to(x.dtype)
    del u, merge
    home = _all_to_all(out_sorted, recv_counts, send, group)
    del out_sorted
    out = torch.empty_like(x)
    out[perm] = home
    return out


def _splitters(
    values: np.ndarray, index: np.ndarray, sizes: np.ndarray, p: int
) -> list[tuple[float, int, int]]:
    """``p - 1`` keys (value, rank, index): weighted quantiles of every rank's regular samples."""
    ranks = np.repeat(np.arange(p), values.shape[1])
    keep = np.repeat(sizes > 0, values.shape[1])
    v, r, i = values.ravel()[keep], ranks[keep], index.ravel()[keep].astype(np.int64)
    weight = np.repeat(sizes / values.shape[1], values.shape[1])[keep]
    order = np.lexsort((i, r, v))
    cum = np.cumsum(weight[order])
    total = float(sizes.sum())
    out = []
    for j in range(1, p):
        t = min(int(np.searchsorted(cum, j * total / p)), len(order) - 1)
        out.append((float(v[order[t]]), int(r[order[t]]), int(i[order[t]])))
    return out


def _position(xs: torch.Tensor, key: tuple[float, int, int], me: int) -> int:
    """How many entries of this rank's sorted ``xs`` have a key below ``key``."""
    value, rank, index = key
    probe = torch.tensor([value], dtype=xs.dtype, device=xs.device)
    if rank == me:
        return index
    return int(torch.searchsorted(xs, probe, right=me < rank)[0])


def _merge_levels(u: torch.Tensor, group: Any) -> None:
    """Merge the ranges' isotonic solutions level by level into the global one, in place."""
    p, me = dist.get_world_size(group), dist.get_rank(group)
    width = 1
    while width < p:
        _merge_level(u, width, p, me, group)
        width *= 2


def _pairs(width: int, p: int) -> list[tuple[list[int], list[int]]]:
    return [
        (list(range(g, g + width)), list(range(g + width, min(g + 2 * width, p))))
        for g in range(0, p, 2 * width)
        if g + width < p
    ]


def _merge_level(u: torch.Tensor, width: int, p: int, me: int, group: Any) -> None:
    """One level: every pair (A, C) of neighbouring groups of ``width`` ranks merges."""
    q = CANDIDATES
    pairs = _pairs(width, p)
    mine = next((i for i, (a, c) in enumerate(pairs) if me in a or me in c), None)
    on_left = mine is not None and me in pairs[mine][0]
    # round 0 proposes from all of u; bracket (lo, hi) = (first of C, last of A) once known
    info = _propose(u, u, q, group)
    prefix: np.ndarray | None = None
    host = np.zeros(0)
    brackets: list[Any] = [None] * len(pairs)
    roots: list[float | None] = [None] * len(pairs)
    for j, (a, c) in enumerate(pairs):
        last_a = [info[r, 3] for r in a if info[r, 0] > 0]
        first_c = [info[r, 2] for r in c if info[r, 0] > 0]
        if last_a and first_c and last_a[-1] > first_c[0]:
            brackets[j] = (first_c[0], last_a[-1])
    while True:
        active = [j for j in range(len(pairs)) if brackets[j] is not None and roots[j] is None]
        if not active:
            break
        cands = np.full((len(pairs), 2 + 2 * width * q), np.nan)
        for j in active:
            lo, hi = brackets[j]
            pool = info[pairs[j][0] + pairs[j][1], 4:].ravel()
            inside = pool[(pool > lo) & (pool < hi)]
            found = np.unique(np.concatenate([[lo, hi], inside]))
            cands[j, : found.size] = found
        # this rank's part of h at its pair's candidates: [sum, count] above (A) or below (C)
        part = np.zeros((cands.shape[1], 2))
        if mine in active:
            if prefix is None:  # u does not change within a level: one prefix sum per level
                host = u.cpu().numpy()
                prefix = np.concatenate([[0.0], np.cumsum(host)])
            part = _partial_sums(host, prefix, cands[mine], on_left)
        sums = _all_gather(torch.from_numpy(part.ravel()).to(u.device), group).cpu().numpy()
        sums = sums.reshape(p, -1, 2)
        for j in active:
            a, c = pairs[j]
            roots[j], brackets[j] = _solve(
                cands[j], sums[a].sum(0), sums[c].sum(0), all(info[a + c, 1] <= q)
            )
        if all(roots[j] is not None for j in active):
            break
        window = u[:0]
        if mine is not None and roots[mine] is None and brackets[mine] is not None:
            lo, hi = brackets[mine]
            window = u[(u > lo) & (u < hi)]
        info = _propose(u, window, q, group)
    mu = roots[mine] if mine is not None else None
    if mu is not None:
        if on_left:
            u[u > mu] = mu
        else:
            u[u < mu] = mu


def _propose(u: torch.Tensor, window: torch.Tensor, q: int, group: Any) -> np.ndarray:
    """All-gather of every rank's (size, distinct values in window, first, last, q candidates)."""
    distinct = torch.unique_consecutive(window)
    pick = distinct
    if distinct.numel() > q:
        at = torch.linspace(0, distinct.numel() - 1, q, device=u.device).round().long()
        pick = distinct[at]
    props = torch.full((q,), float("nan"), dtype=torch.float64, device=u.device)
    props[: pick.numel()] = pick
    ends = [float(u[0]), float(u[-1])] if u.numel() else [float("nan")] * 2
    head = torch.tensor([u.numel(), distinct.numel(), *ends], dtype=torch.float64)
    return _all_gather(torch.cat([head.to(u.device), props]), group).cpu().numpy()


def _partial_sums(u: np.ndarray, prefix: np.ndarray, cands: np.ndarray, on_left: bool) -> Any:
    """Per candidate c: (sum, count) of the values above c (left group) or below c (right);
    ``prefix``: the prefix sums of ``u`` (from 0)."""
    n = int(np.count_nonzero(~np.isnan(cands)))
    out = np.zeros((cands.size, 2))
    c = cands[:n]
    if on_left:
        start = np.searchsorted(u, c, side="right")
        out[:n, 0], out[:n, 1] = prefix[-1] - prefix[start], u.size - start
    else:
        stop = np.searchsorted(u, c, side="left")
        out[:n, 0], out[:n, 1] = prefix[stop], stop
    return out


def _solve(
    cands: np.ndarray, left: np.ndarray, right: np.ndarray, complete: bool
) -> tuple[float | None, tuple[float, float] | None]:
    """(root, None) when found, else (None, the narrower bracket).

    ``left``/``right``: per candidate, (sum, count) of the left group's values above it and of the
    right group's values below it; ``complete``: every breakpoint in the bracket is a candidate.
    """
    n = int(np.count_nonzero(~np.isnan(cands)))
    c = cands[:n]
    h = (left[:n, 0] - c * left[:n, 1]) - (c * right[:n, 1] - right[:n, 0])
    positive = np.flatnonzero(h > 0)  # h(lo) > 0 > h(hi), up to rounding
    i = min(int(positive[-1]) if positive.size else 0, n - 2)
    if h[i + 1] == 0.0:
        return float(c[i + 1]), None
    if not complete:
        return None, (float(c[i]), float(c[i + 1]))
    mu = (left[i, 0] + right[i + 1, 0]) / (left[i, 1] + right[i + 1, 1])
    return float(min(max(mu, c[i]), c[i + 1])), None
