r"""The "triton" isotonic kernel: a tiled lower-hull merge in a handful of Triton launches.

Same mathematics as ``hull`` (spec: ALG page): the isotonic solution of a row of ``n`` values is
the slope of the lower convex hull of the float64 prefix-sum points $P_k = (k, S_k)$,
$k = 0..n$ ($W = n + 1$ points, never padded). Three tunables (:data:`TUNING`): the tile size
$T$, the group size $G$ and the merge width $K$. One prox of a ``(B, d)`` batch is:

1. torch: ``full`` (the strength, when given as a float), ``sort``, ``mean`` (the centring);
2. ``_tile_kernel``, one program per tile of $T$ points: the ramp and centring, the tile's
   float64 prefix sums (``tl.cumsum``), its sum, the hull of every group of $G$ points by the
   brute-force vertex test ($q$ is a vertex iff $\max_{p<q}$ slope$(p,q) < \min_{r>q}$
   slope$(q,r)$), then $\lceil\log_K(T/G)\rceil$ in-tile merge levels of up to $K$ child hulls
   each (the K-way rule below), spliced into the tile's links on the fly;
3. torch: ``cumsum_`` of the tile sums (each tile's offset; $S_k$ = tile offset + local sum);
4. ``_merge_kernel``, once per level above the tiles ($L = \lceil\log_K\lceil W/T\rceil\rceil$
   levels), one program per node of up to $K$ children: the K-way rule, written as four
   integers per child; nothing is spliced, the levels are walked instead;
5. ``_slopes_kernel``, one lane per element: its hull edge (the tile links, then one step per
   level above the tiles), the slope plus the shift, cast, scattered through the sort permutation.

Launches: $L + 5$ plus ``full`` ($\lceil\log_K\lceil (d+1)/T\rceil\rceil + 6$), whatever the
data: no host synchronization, no data-dependent shape. A ragged list of row sets
(:func:`prox_ragged_triton`, ``TritonBackend.prox_ragged``) runs the same kernels once over the
concatenated segments (``RAGGED``: per-segment tables instead of row arithmetic; tiles and nodes
never straddle a segment; no padding).

The K-way rule (checked in exact arithmetic by the design notes' oracle): for the children
$H_0..H_{K-1}$ of a node (x-ordered) and $B(i, j)$ the bridge (lower common tangent) of $H_i$ and
$H_j$, child $j$ keeps its vertices between $l_j$, the end on $H_j$ of the steepest bridge from a
child on its left, and $r_j$, the end on $H_j$ of the flattest bridge to a child on its right,
iff the first slope is below the second. A point's last vertex $v$ (at or before it) then becomes
$\min(v, r_j)$ if $v \ge l_j$ and else the $r$ of the nearest kept child on its left (and
symmetrically for the next vertex), which is how both the splice in a tile and the walk above the
tiles move from one level to the next. Bridges are the simultaneous binary searches of
Overmars and van Leeuwen, one lane per child pair.

Work and memory per element: $O(G + K\log_2 T/G)$ in the tile kernel (the group tests and the
amortised bridge probes), $O(L)$ in the slopes; 8 bytes of prefix sums and 8 of links per point,
$16/G$ of in-tile scratch, and 16 per child of a level above the tiles (float32 peak: 7× the
input, at every d).

The kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter when
``TRITON_INTERPRET=1`` was set before this module was imported. Each public function is a torch
custom op (``torch.library.triton_op`` + ``wrap_triton``, so ``torch.compile`` traces into the
kernels); under the interpreter, where ``wrap_triton`` cannot trace, an opaque custom op with the
same schema and a fake implementation stands in.
"""

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import _disable_current_modes

from .. import _segments as segments
from .backend import Backend, RowsResult, is_active
from .common import ceil_log2, check_rows
from .ragged import segment_strengths

#: True when the kernels below were defined for Triton's interpreter (CPU tensors).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: lanes per program of the elementwise slopes kernel
_BLOCK = 1024
#: brute-force vertex tests of a tile run in chunks of at most this many point pairs
_PAIRS = 8192

_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Tuning(NamedTuple):
    """The tunables: tile size T, group size G (powers of two, 2 <= G <= T), merge width K."""

    tile: int
    group: int
    width: int


#: the tunables every call uses (see :func:`tuning`)
TUNING = Tuning(tile=4096, group=32, width=16)


def _check_tuning(t: Tuning) -> None:
    def pow2(v: int) -> bool:
        return v >= 1 and v & (v - 1) == 0

    if not (pow2(t.tile) and pow2(t.group) and 2 <= t.group <= t.tile):
        raise ValueError(f"tile and group must be powers of two with 2 <= group <= tile, got {t}")
    if not 2 <= t.width <= 64:
        raise ValueError(f"the merge width must be in 2..64, got {t.width}")


@contextlib.contextmanager
def tuning(tile: int, group: int, width: int) -> Iterator[Tuning]:
    """Run the kernels with other tunables inside the block (tests, benchmarks)."""
    global TUNING
    new = Tuning(tile, group, width)
    _check_tuning(new)
    old, TUNING = TUNING, new
    try:
        yield new
    finally:
        TUNING = old


def tile_levels(t: Tuning) -> int:
    """Merge levels inside a tile: children of G, G·K, ... points until one child is the tile."""
    levels, size = 0, t.group
    while size < t.tile:
        size *= t.width
        levels += 1
    return levels


def merge_levels(points: int, t: Tuning) -> int:
    """Merge levels above the tiles for rows of ``points`` points: ⌈log_K ⌈points / T⌉⌉."""
    levels, size = 0, t.tile
    while size < points:
        size *= t.width
        levels += 1
    return levels


# ---------------------------------------------------------------------------------------------
# Device functions
#
# A *segment* is one row (a ``(B, n)`` batch: segment = row) or one vector of a ragged list
# (``RAGGED``). Its frame: ``seg`` (index), ``pbase`` (its first point in the point buffers),
# ``tb`` (its first tile), ``cbase`` (the scan of the tile sums before that tile) and ``W`` (its
# number of points). Point indices ``p`` are local to the segment.


@triton.jit
def _step(info_ptr, ib_ptr, seg, p, v, live, W, B, nlev, T: tl.constexpr, K: tl.constexpr,
          LAST: tl.constexpr, RAGGED: tl.constexpr):  # fmt: skip
    """``_walk`` from a loaded link ``v`` of point ``p`` (see there). The children of level
    ``lv`` of a segment start at ``ib[lv·B + seg]`` (``RAGGED``, B segments) or at the level's
    base plus ``seg`` times the children per row (B rows of W points)."""
    size = (seg * 0).to(tl.int64) + T
    base = size * 0
    for lv in range(nlev):
        count = (W + size - 1) // size
        on = live
        if RAGGED:  # -1: the segment has no such level
            first = tl.load(ib_ptr + lv * B + seg + p * 0, mask=live, other=-1)
            on = live & (first >= 0)
        else:
            first = base + seg * count
        at = info_ptr + (first + p // size) * 4
        lo = tl.load(at, mask=on, other=0).to(tl.int64)
        hi = tl.load(at + 1, mask=on, other=0).to(tl.int64)
        if LAST:
            new = tl.where(v >= lo, tl.minimum(v, hi), tl.load(at + 2, mask=on, other=0))
        else:
            new = tl.where(v <= hi, tl.maximum(v, lo), tl.load(at + 3, mask=on, other=0))
        v = tl.where(on, new, v)
        base += B * count
        size *= K
    return v


@triton.jit
def _offset(csum_ptr, tb, cbase, p, live, T: tl.constexpr):
    """The prefix sum before point ``p``'s tile (``p`` local to a segment starting at tile tb)."""
    return tl.load(csum_ptr + tb + p // T - 1, mask=live & (p >= T), other=0.0) - tl.where(
        p >= T, cbase, 0.0
    )


@triton.jit
def _probe(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg, pbase, tb, cbase, lo, hi,
           lower, upper, live, W, B, nlev, T: tl.constexpr, K: tl.constexpr,
           OFFSETS: tl.constexpr, RAGGED: tl.constexpr):  # fmt: skip
    """One probe of a bridge search on the hull of [lower, upper]: the vertex ``v`` at or before
    the middle of [lo, hi], its neighbours on that hull (``v`` itself at the hull's ends), and
    the three ordinates. (One device function: calls are costly in the interpreter.)"""
    mid = (lo + hi) >> 1
    v = tl.load(last_ptr + pbase + mid, mask=live, other=0).to(tl.int64)
    if nlev > 0:
        v = _step(info_ptr, ib_ptr, seg, mid, v, live, W, B, nlev, T, K, True, RAGGED)
        v = v.to(tl.int64)
    has_l = live & (v > lower)
    has_r = live & (v < upper)
    ql = tl.where(has_l, v - 1, v)
    qr = tl.where(has_r, v + 1, v)
    u = tl.load(last_ptr + pbase + ql, mask=has_l, other=0).to(tl.int64)
    w = tl.load(nxt_ptr + pbase + qr, mask=has_r, other=0).to(tl.int64)
    if nlev > 0:
        u = _step(info_ptr, ib_ptr, seg, ql, u, has_l, W, B, nlev, T, K, True, RAGGED)
        w = _step(info_ptr, ib_ptr, seg, qr, w, has_r, W, B, nlev, T, K, False, RAGGED)
    u = tl.where(has_l, tl.maximum(u, lower), v)
    w = tl.where(has_r, tl.minimum(w, upper), v)
    s_v = tl.load(loc_ptr + pbase + v, mask=live, other=0.0)
    s_u = tl.load(loc_ptr + pbase + u, mask=live, other=0.0)
    s_w = tl.load(loc_ptr + pbase + w, mask=live, other=0.0)
    if OFFSETS:  # the tiles' offsets
        s_v += _offset(csum_ptr, tb, cbase, v, live, T)
        s_u += _offset(csum_ptr, tb, cbase, u, live, T)
        s_w += _offset(csum_ptr, tb, cbase, w, live, T)
    return v, u, w, s_v, s_u, s_w


@triton.jit
def _bridge(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg, pbase, tb, cbase,
            lower_a, upper_a, lower_c, upper_c, steps, live, W, B, nlev, T: tl.constexpr,
            K: tl.constexpr, OFFSETS: tl.constexpr, RAGGED: tl.constexpr):  # fmt: skip
    """Bridge ends of the hulls of points [lower_a, upper_a] and [lower_c, upper_c], per lane:
    the simultaneous binary search (``steps`` probes)."""
    gap = upper_a.to(tl.float64) + 0.5  # strictly between the two hulls
    lo_a, hi_a, lo_c, hi_c = lower_a, upper_a, lower_c, upper_c
    pa = lo_a
    pc = lo_c
    sa = tl.zeros(lo_a.shape, tl.float64)
    s_c = sa
    for _ in range(steps):
        pa, la, ra, sa, s_la, s_ra = _probe(
            loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg, pbase, tb, cbase, lo_a,
            hi_a, lower_a, upper_a, live, W, B, nlev, T, K, OFFSETS, RAGGED,
        )  # fmt: skip
        pc, lc, rc, s_c, s_lc, s_rc = _probe(
            loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg, pbase, tb, cbase, lo_c,
            hi_c, lower_c, upper_c, live, W, B, nlev, T, K, OFFSETS, RAGGED,
        )  # fmt: skip
        dy_la = s_la - sa
        dy_ra = s_ra - sa
        dy_c = s_c - sa
        dy_lc = s_lc - sa
        dy_rc = s_rc - sa
        dx_la = (la - pa).to(tl.float64)
        dx_ra = (ra - pa).to(tl.float64)
        dx_c = (pc - pa).to(tl.float64)
        dx_lc = (lc - pa).to(tl.float64)
        dx_rc = (rc - pa).to(tl.float64)
        # strictly below the line from the probe a (the origin) to the probe c
        a_left = dx_c * dy_la < dy_c * dx_la
        a_right = dx_c * dy_ra < dy_c * dx_ra
        c_left = dx_c * dy_lc < dy_c * dx_lc
        c_right = dx_c * dy_rc < dy_c * dx_rc
        # ambiguous case (a+ and c- below): compare the lines through (a, a+) and (c-, c) at the
        # separator; if the right one is not lower there, a* > a, else c* < c. The denominators
        # are nonzero whenever the comparison matters (a+ != a and c- != c); guard the others.
        to_gap = gap - pa.to(tl.float64)
        line_a = dy_ra / tl.where(dx_ra == 0.0, 1.0, dx_ra) * to_gap
        run_c = dx_c - dx_lc
        line_c = dy_c + (dy_c - dy_lc) / tl.where(run_c == 0.0, 1.0, run_c) * (to_gap - dx_c)
        right_higher = line_c >= line_a
        move_a = a_right & tl.where(c_left, right_higher, c_right == 0)
        move_c = c_left & tl.where(a_right, right_higher == 0, a_left == 0)
        lo_a = tl.where(move_a, ra, lo_a)
        lo_c = tl.where(c_right, rc, lo_c)
        hi_a = tl.where(a_left, la, hi_a)
        hi_c = tl.where(move_c, lc, hi_c)
    return pa, pc, sa, s_c


@triton.jit
def _merge_node(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, out_ptr, out_base, seg,
                pbase, tb, cbase, node_lo, node_end, size, steps, nlev, W, B, T: tl.constexpr,
                K: tl.constexpr, KP: tl.constexpr, OFFSETS: tl.constexpr,
                RAGGED: tl.constexpr):  # fmt: skip
    """The K-way rule for the children ``[node_lo + k·size, ...)`` of a node ending at
    ``node_end``: child k's ``(l, r, prev_r, next_l)`` go to ``out_ptr[(out_base + k)·4 ..]``
    (a dropped child has ``l = W``, ``r = -1``). One lane per child pair."""
    kk = tl.arange(0, KP).to(tl.int64)
    i = kk[:, None]
    j = kk[None, :]
    lo_i = node_lo + i * size + j * 0  # every lane's own (KP, KP) bounds
    hi_i = tl.minimum(lo_i + size, node_end) - 1
    lo_j = node_lo + j * size + i * 0
    hi_j = tl.minimum(lo_j + size, node_end) - 1
    pair = (i < j) & (j < K) & (lo_j < node_end)
    steps = tl.where(node_end - node_lo > size, steps, 0)  # one child: nothing to search
    # the probes' ordinates after the last step are the bridge ends'
    a, c, s_a, s_c = _bridge(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg, pbase,
                             tb, cbase, lo_i, hi_i, lo_j, hi_j, steps, pair, W, B, nlev, T, K,
                             OFFSETS, RAGGED)  # fmt: skip
    slope = (s_c - s_a) / tl.where(pair, (c - a).to(tl.float64), 1.0)
    # child j: the steepest bridge from the left (ties: the rightmost end), and child i: the
    # flattest bridge to the right (ties: the leftmost end)
    s_left = tl.max(tl.where(pair, slope, -float("inf")), axis=0)
    left_end = tl.max(tl.where(pair & (slope == s_left[None, :]), c, -1), axis=0)
    s_right = tl.min(tl.where(pair, slope, float("inf")), axis=1)
    right_end = tl.min(tl.where(pair & (slope == s_right[:, None]), a, W), axis=1)
    lo_k = node_lo + kk * size
    has = (kk < K) & (lo_k < node_end)
    left_end = tl.where(left_end < 0, lo_k, left_end)
    right_end = tl.where(right_end >= W, tl.minimum(lo_k + size, node_end) - 1, right_end)
    keep = has & (s_left < s_right)
    l = tl.where(keep, left_end, W)
    r = tl.where(keep, right_end, -1)
    prev_r = tl.max(tl.where((i < j) & keep[:, None], r[:, None], -1), axis=0)
    next_l = tl.min(tl.where((i < j) & keep[None, :], l[None, :], W), axis=1)
    at = out_ptr + (out_base + kk) * 4
    ty = out_ptr.dtype.element_ty
    tl.store(at, l.to(ty), mask=has)
    tl.store(at + 1, r.to(ty), mask=has)
    tl.store(at + 2, prev_r.to(ty), mask=has)
    tl.store(at + 3, next_l.to(ty), mask=has)


@triton.jit
def _frame(seg_ptr, csum_ptr, seg, n, NT, live, RAGGED: tl.constexpr):
    """A segment's ``(element base, length, point base, first tile, scan before it)``: from the
    ``(S, 4)`` table (``RAGGED``) or, for row ``seg`` of a ``(B, n)`` batch, by arithmetic."""
    if RAGGED:
        at = seg_ptr + seg * 4
        ebase = tl.load(at, mask=live, other=0)
        length = tl.load(at + 1, mask=live, other=1)
        pbase = tl.load(at + 2, mask=live, other=0)
        tb = tl.load(at + 3, mask=live, other=0)
    else:
        ebase = seg * n
        length = seg * 0 + n
        pbase = seg * (n + 1)
        tb = seg * NT
    cbase = tl.load(csum_ptr + tb - 1, mask=live & (tb > 0), other=0.0)
    return ebase, length, pbase, tb, cbase


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _tile_kernel(x_ptr, lam_ptr, shift_ptr, loc_ptr, tot_ptr, last_ptr, nxt_ptr, scratch_ptr,
                 seg_ptr, tseg_ptr, n, NT, lam_stride, log_w, RAMP: tl.constexpr,
                 SORTED: tl.constexpr, RAGGED: tl.constexpr, T: tl.constexpr, G: tl.constexpr,
                 CH: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, LOG_G: tl.constexpr,
                 LOG_K: tl.constexpr, TLEV: tl.constexpr):  # fmt: skip
    """One tile of T points: local prefix sums, the tile's sum, the tile's hull as links."""
    pid = tl.program_id(0).to(tl.int64)
    if RAGGED:
        seg = tl.load(tseg_ptr + pid).to(tl.int64)
    else:
        seg = pid // NT
    ebase, n, pbase, tb, cbase = _frame(seg_ptr, tot_ptr, seg, n, NT, pid >= 0, RAGGED)
    W = n + 1
    lo = (pid - tb) * T
    end = tl.minimum(lo + T, W)
    k = tl.arange(0, T).to(tl.int64)
    p = lo + k
    real = p < n  # element p lies between points p and p + 1
    y = tl.load(x_ptr + ebase + p, mask=real, other=0.0).to(tl.float64)
    if RAMP:
        # a float64 strength per segment, or one for all (scalar arguments would be float32)
        lam = tl.load(lam_ptr + seg * lam_stride)
        if SORTED:  # sorted rows: clamp λ to max - min, the same prox (PROX-21)
            top = tl.load(x_ptr + ebase + (n - 1)).to(tl.float64)
            low = tl.load(x_ptr + ebase).to(tl.float64)
            lam = tl.minimum(lam, top - low)
        y = y - lam * ((2.0 * p.to(tl.float64) - (n - 1)) / tl.maximum(n - 1, 1))
    y = tl.where(real, y - tl.load(shift_ptr + seg), 0.0)
    total = tl.cumsum(y, 0)
    tl.store(loc_ptr + pbase + p, total - y, mask=p < end)
    tl.store(tot_ptr + pid, tl.sum(y, 0))
    tl.debug_barrier()
    # every group of G points: the brute-force vertex test, then its links
    NG: tl.constexpr = CH // G
    ga = tl.arange(0, G).to(tl.int64)
    qa = ga[None, :, None]
    qb = ga[None, None, :]
    for c in range((end - lo + CH - 1) // CH):  # the chunks holding points
        first = lo + c * CH + tl.arange(0, NG).to(tl.int64) * G
        pq = first[:, None, None] + qa
        pp = first[:, None, None] + qb
        vp = pp < end
        sq = tl.load(loc_ptr + pbase + pq, mask=pq < end, other=0.0)
        sp = tl.load(loc_ptr + pbase + pp, mask=vp, other=0.0)
        slope = (sp - sq) / tl.where(qb == qa, 1.0, (qb - qa).to(tl.float64))
        left = tl.max(tl.where(vp & (qb < qa), slope, -float("inf")), axis=2)
        right = tl.min(tl.where(vp & (qb > qa), slope, float("inf")), axis=2)
        vertex = (left < right)[:, None, :] & vp
        last = tl.max(tl.where(vertex & (qb <= qa), pp, -1), axis=2)
        nxt = tl.min(tl.where(vertex & (qb >= qa), pp, W), axis=2)
        q = first[:, None] + ga[None, :]
        tl.store(last_ptr + pbase + q, last.to(last_ptr.dtype.element_ty), mask=q < end)
        tl.store(nxt_ptr + pbase + q, nxt.to(nxt_ptr.dtype.element_ty), mask=q < end)
    tl.debug_barrier()
    # in-tile merge levels: children of G·K^lev points, spliced into the links
    size = (pid * 0) + G
    steps = 2 * tl.minimum(log_w, LOG_G) + 2
    mine = scratch_ptr + pid * (T // G) * 4
    for _ in range(TLEV):
        span = size * K
        for node in range((end - lo + span - 1) // span):
            node_lo = lo + node * span
            _merge_node(loc_ptr, tot_ptr, last_ptr, nxt_ptr, scratch_ptr, scratch_ptr,
                        scratch_ptr, pid * (T // G) + node * K, seg, pbase, tb, cbase, node_lo,
                        tl.minimum(node_lo + span, end), size, steps, 0, W, 0, T, K, KP, False,
                        False)  # fmt: skip
        tl.debug_barrier()
        live = p < end
        at = mine + (k // size) * 4
        lft = tl.load(at, mask=live, other=0)
        rgt = tl.load(at + 1, mask=live, other=0)
        v = tl.load(last_ptr + pbase + p, mask=live, other=0)
        v = tl.where(v >= lft, tl.minimum(v, rgt), tl.load(at + 2, mask=live, other=0))
        w = tl.load(nxt_ptr + pbase + p, mask=live, other=0)
        w = tl.where(w <= rgt, tl.maximum(w, lft), tl.load(at + 3, mask=live, other=0))
        tl.debug_barrier()
        tl.store(last_ptr + pbase + p, v, mask=live)
        tl.store(nxt_ptr + pbase + p, w, mask=live)
        tl.debug_barrier()
        size = span
        steps = tl.minimum(steps + 2 * LOG_K, 2 * log_w + 2)


@triton.jit
def _merge_kernel(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg_ptr, node_ptr, n,
                  NT, B, nodes, size, steps, nlev, out_base, T: tl.constexpr, K: tl.constexpr,
                  KP: tl.constexpr, RAGGED: tl.constexpr):  # fmt: skip
    """One level above the tiles: one program per node of up to K children of ``size`` points
    (``RAGGED``: the level's ``(segment, node)`` pairs from ``node_ptr``)."""
    pid = tl.program_id(0).to(tl.int64)
    if RAGGED:
        seg = tl.load(node_ptr + 2 * pid)
        node = tl.load(node_ptr + 2 * pid + 1)
    else:
        seg = pid // nodes
        node = pid % nodes
    _, n, pbase, tb, cbase = _frame(seg_ptr, csum_ptr, seg, n, NT, pid >= 0, RAGGED)
    W = n + 1
    node_lo = node * size * K
    node_end = tl.minimum(node_lo + size * K, W)
    if RAGGED:
        first = tl.load(ib_ptr + nlev * B + seg)
    else:
        first = out_base + seg * ((W + size - 1) // size)
    _merge_node(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, info_ptr,
                first + node * K, seg, pbase, tb, cbase, node_lo, node_end, size,
                steps, nlev, W, B, T, K, KP, True, RAGGED)  # fmt: skip


@triton.jit
def _round_bf16_bits(v):
    """float64 -> the bits of the nearest bfloat16 (via float32, as torch rounds), as int16."""
    bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _slopes_kernel(loc_ptr, csum_ptr, last_ptr, nxt_ptr, info_ptr, ib_ptr, seg_ptr, ids_ptr,
                   shift_ptr, perm_ptr, out_ptr, z_ptr, total, n, NT, B, nlev, T: tl.constexpr,
                   K: tl.constexpr, PERM: tl.constexpr, WRITE_Z: tl.constexpr,
                   OUT_KIND: tl.constexpr, RAGGED: tl.constexpr,
                   BLOCK: tl.constexpr):  # fmt: skip
    """Element i gets the slope of the hull edge over [i, i+1], plus its segment's shift."""
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = g < total
    if RAGGED:
        seg = tl.load(ids_ptr + g, mask=live, other=0).to(tl.int64)
    else:
        seg = g // n
    ebase, n, pbase, tb, cbase = _frame(seg_ptr, csum_ptr, seg, n, NT, live, RAGGED)
    W = n + 1
    i = g - ebase
    left = tl.load(last_ptr + pbase + i, mask=live, other=0).to(tl.int64)
    right = tl.load(nxt_ptr + pbase + i + 1, mask=live, other=0).to(tl.int64)
    left = _step(info_ptr, ib_ptr, seg, i, left, live, W, B, nlev, T, K, True,
                 RAGGED).to(tl.int64)  # fmt: skip
    right = _step(info_ptr, ib_ptr, seg, i + 1, right, live, W, B, nlev, T, K, False,
                  RAGGED).to(tl.int64)  # fmt: skip
    right = tl.where(live & (right > left), right, left + 1)
    rise = tl.load(loc_ptr + pbase + right, mask=live, other=0.0) + _offset(
        csum_ptr, tb, cbase, right, live, T
    )
    rise -= tl.load(loc_ptr + pbase + left, mask=live, other=0.0) + _offset(
        csum_ptr, tb, cbase, left, live, T
    )
    value = rise / (right - left).to(tl.float64) + tl.load(shift_ptr + seg, mask=live, other=0.0)
    if WRITE_Z:
        tl.store(z_ptr + g, value, mask=live)
    dest = g
    if PERM:
        if RAGGED:  # a flat permutation
            dest = tl.load(perm_ptr + g, mask=live, other=0)
        else:
            dest = ebase + tl.load(perm_ptr + g, mask=live, other=0)
    if OUT_KIND == 0:  # float32, float64: one rounding
        tl.store(out_ptr + dest, value.to(out_ptr.dtype.element_ty), mask=live)
    elif OUT_KIND == 1:  # float16: through float32, as torch converts
        tl.store(out_ptr + dest, value.to(tl.float32).to(out_ptr.dtype.element_ty), mask=live)
    else:  # bfloat16, as bits (the interpreter's own float32 -> bfloat16 cast truncates)
        tl.store(out_ptr + dest, _round_bf16_bits(value), mask=live)


# ---------------------------------------------------------------------------------------------
# Launching (every launch goes through here, so the benchmarks can count them)

_RECORDERS: list[tuple[list[str], bool]] = []


def _launch(kernel: Any, programs: int, *args: Any, **meta: Any) -> None:
    run = True
    for names, launch in _RECORDERS:
        names.append(kernel.fn.__name__)
        run = run and launch
    if not run:
        return
    grid = (programs,)
    if INTERPRET:  # the interpreter's own tensor copies are not device work: hide them
        with _disable_current_modes():
            kernel[grid](*args, **meta)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **meta)


@contextlib.contextmanager
def record_launches(run: bool = True) -> Iterator[list[str]]:
    """Record the name of every Triton kernel launched inside the block (for the launch count).

    Inside, the custom ops call their implementations directly, so a ``TorchDispatchMode`` also
    sees the torch ops inside them (sort, mean, scan). With ``run=False`` nothing is launched:
    the sequence of launches depends on the shapes only, so it is recorded without computing
    (the outputs are then garbage).
    """
    global _isotonic_op, _prox_rows_op
    names: list[str] = []
    ops = _isotonic_op, _prox_rows_op
    _RECORDERS.append((names, run))
    _isotonic_op, _prox_rows_op = _isotonic_impl, _prox_rows_impl
    try:
        yield names
    finally:
        _RECORDERS.remove((names, run))
        _isotonic_op, _prox_rows_op = ops


def check_device(t: torch.Tensor) -> None:
    """ValueError unless ``t`` is on CUDA or the kernels run in Triton's interpreter."""
    if t.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"method='triton' runs on CUDA tensors, got a tensor on {t.device.type}; to run the "
            "Triton kernels on the CPU (slowly), set TRITON_INTERPRET=1 before importing "
            "weightshare, or use another method"
        )


_OUT_KIND = {torch.float16: 1, torch.bfloat16: 2}


class _Layout(NamedTuple):
    """The tables of a ragged list of segments (cached per layout, device and tunables)."""

    segs: torch.Tensor  # (S, 4) int64: element base, length, point base, first tile
    tile_seg: torch.Tensor  # (tiles,) int64: each tile's segment
    nodes: list[torch.Tensor]  # per level above the tiles: (nodes, 2) int64 (segment, node)
    first: torch.Tensor  # (levels·S,) int64: a segment's first child per level (-1: none)
    points: int
    tiles: int
    children: int  # children of all levels (rows of the merge info)
    steps: list[int]  # bridge search steps per level
    log_w: int


@functools.lru_cache(maxsize=32)
def _layout(runs: tuple[tuple[int, int], ...], device: torch.device, t: Tuning) -> _Layout:
    lengths = [d for count, d in runs for _ in range(count)]
    table, tile_seg = [], []
    ebase = pbase = tiles = 0
    for s, n in enumerate(lengths):
        table.append((ebase, n, pbase, tiles))
        count = -(-(n + 1) // t.tile)
        tile_seg += [s] * count
        ebase, pbase, tiles = ebase + n, pbase + n + 1, tiles + count
    top = max(lengths) + 1
    levels = merge_levels(top, t)
    nodes: list[list[int]] = [[] for _ in range(levels)]
    first = [-1] * (levels * len(lengths))
    children = 0
    for lv in range(levels):
        size = t.tile * t.width**lv
        for s, n in enumerate(lengths):
            if merge_levels(n + 1, t) > lv:
                count = -(-(n + 1) // size)
                first[lv * len(lengths) + s] = children
                children += count
                for node in range(-(-count // t.width)):
                    nodes[lv] += [s, node]
    steps = [2 * ceil_log2(min(t.tile * t.width**lv, top)) + 2 for lv in range(levels)]

    def dev(values: list[int]) -> torch.Tensor:
        return segments.to_device(torch.tensor(values, dtype=torch.int64), device)

    return _Layout(
        dev([v for row in table for v in row]), dev(tile_seg), [dev(lv) for lv in nodes],
        dev(first or [-1]), pbase, tiles, children, steps, ceil_log2(top),
    )  # fmt: skip


class _Tiles(NamedTuple):
    """What the tile kernel leaves for the merges: local prefix sums, the scan of the tile sums
    (over all tiles, in order), links, and the tiles per row (0 for a ragged list)."""

    loc: torch.Tensor
    csum: torch.Tensor
    last: torch.Tensor
    nxt: torch.Tensor
    per_row: int


def _tiles(
    x: torch.Tensor,
    lam: torch.Tensor,
    shift: torch.Tensor,
    ramp: bool,
    geo: _Layout | None = None,
) -> _Tiles:
    """The tile kernel and the scan of the tile sums: over the ``(B, n)`` rows ``x``, or over
    the flat segments of ``geo`` (sorted rows with the ramp when ``ramp``)."""
    t = TUNING
    if geo is None:
        rows, n = x.shape
        per_row = -(-(n + 1) // t.tile)
        points, tiles, log_w = rows * (n + 1), rows * per_row, ceil_log2(n + 1)
    else:
        n = per_row = 0
        points, tiles, log_w = geo.points, geo.tiles, geo.log_w
    dev = x.device
    itype = torch.int32 if points < 2**31 else torch.int64
    loc = torch.empty(points, dtype=torch.float64, device=dev)
    sums = torch.empty(tiles, dtype=torch.float64, device=dev)
    last = torch.empty(points, dtype=itype, device=dev)
    nxt = torch.empty_like(last)
    scratch = torch.empty((tiles * (t.tile // t.group), 4), dtype=itype, device=dev)
    _launch(
        _tile_kernel, tiles,
        x, lam, shift, loc, sums, last, nxt, scratch, shift if geo is None else geo.segs,
        shift if geo is None else geo.tile_seg, n, per_row, int(lam.numel() > 1), log_w,
        RAMP=ramp, SORTED=ramp, RAGGED=geo is not None, T=t.tile, G=t.group,
        CH=min(t.tile, max(t.group, _PAIRS // t.group)), K=t.width, KP=1 << ceil_log2(t.width),
        LOG_G=ceil_log2(t.group), LOG_K=ceil_log2(t.width), TLEV=tile_levels(t),
        num_warps=8 if t.tile >= 1024 else 4,
    )  # fmt: skip
    return _Tiles(loc, sums.cumsum_(dim=0), last, nxt, per_row)


def _levels(h: _Tiles, n: int, geo: _Layout | None = None) -> torch.Tensor:
    """The merge levels above the tiles (of rows of ``n`` values, or of ``geo``'s segments):
    four integers per child."""
    t = TUNING
    kp = 1 << ceil_log2(t.width)
    dev = h.loc.device
    if geo is not None:
        info = torch.empty((max(1, geo.children), 4), dtype=h.last.dtype, device=dev)
        count = geo.segs.shape[0] // 4
        for lv, (nodes, steps) in enumerate(zip(geo.nodes, geo.steps, strict=True)):
            _launch(
                _merge_kernel, nodes.shape[0] // 2,
                h.loc, h.csum, h.last, h.nxt, info, geo.first, geo.segs, nodes, 0, 0, count, 0,
                t.tile * t.width**lv, steps, lv, 0, T=t.tile, K=t.width, KP=kp, RAGGED=True,
            )  # fmt: skip
        return info
    width = n + 1
    rows = h.loc.shape[0] // width
    counts = [-(-width // (t.tile * t.width**lv)) for lv in range(merge_levels(width, t))]
    info = torch.empty((max(1, rows * sum(counts)), 4), dtype=h.last.dtype, device=dev)
    base = 0
    for lv, count in enumerate(counts):
        size = t.tile * t.width**lv
        nodes = -(-count // t.width)
        _launch(
            _merge_kernel, rows * nodes,
            h.loc, h.csum, h.last, h.nxt, info, info, info, info, n, h.per_row, rows, nodes,
            size, 2 * ceil_log2(min(size, width)) + 2, lv, base,
            T=t.tile, K=t.width, KP=kp, RAGGED=False,
        )  # fmt: skip
        base += rows * count
    return info


def _slopes(
    h: _Tiles,
    info: torch.Tensor,
    shift: torch.Tensor,
    out: torch.Tensor,
    perm: torch.Tensor | None,
    with_z: bool,
    geo: _Layout | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The slopes written into ``out`` (``(B, n)``, or flat for ``geo``'s segments with their
    ``ids``), scattered through ``perm`` if given. Returns the float64 values in point order if
    ``with_z`` (the clusters the backward pass needs), else an empty tensor."""
    t = TUNING
    total = out.numel()
    if geo is None:
        rows, n = out.shape
        count, levels = rows, merge_levels(n + 1, t)
    else:
        n, count, levels = 0, geo.segs.shape[0] // 4, len(geo.nodes)
    zs = torch.empty(out.shape if with_z else (0,), dtype=torch.float64, device=out.device)
    kind = _OUT_KIND.get(out.dtype, 0)
    _launch(
        _slopes_kernel, -(-total // _BLOCK),
        h.loc, h.csum, h.last, h.nxt, info, info if geo is None else geo.first,
        info if geo is None else geo.segs, info if ids is None else ids, shift,
        shift if perm is None else perm, out.view(torch.int16) if kind == 2 else out, zs, total,
        n, h.per_row, count, levels, T=t.tile, K=t.width, PERM=perm is not None,
        WRITE_Z=with_z, OUT_KIND=kind, RAGGED=geo is not None, BLOCK=_BLOCK,
    )  # fmt: skip
    return zs


def _isotonic_impl(y: torch.Tensor) -> torch.Tensor:
    shift = y.mean(dim=1, dtype=torch.float64)
    h = _tiles(y, shift, shift, False)
    info = _levels(h, y.shape[1])
    out = torch.empty_like(y)
    _slopes(h, info, shift, out, None, False)
    return out


def _prox_rows_impl(
    x: torch.Tensor, lam: torch.Tensor, with_z: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, perm = torch.sort(x, dim=1)
    shift = xs.mean(dim=1, dtype=torch.float64)  # the ramp has mean zero
    h = _tiles(xs, lam, shift, True)
    del xs  # freed before the output exists: the float32 peak stays at 7x the input
    info = _levels(h, x.shape[1])
    out = torch.empty_like(x)
    return out, perm, _slopes(h, info, shift, out, perm, with_z)


def prox_ragged_triton(
    rows: list[torch.Tensor], lams: list[float | torch.Tensor]
) -> list[torch.Tensor]:
    """The prox of ``(B_i, d_i)`` row sets of one dtype and CUDA device (or the interpreter),
    ``d_i >= 2``, as one pipeline over their concatenation: one ``sort_segments``, then tiles,
    merges and slopes over the segments (tiles never cross a segment), no padding."""
    device = rows[0].device
    runs = tuple((r.shape[0], r.shape[1]) for r in rows)
    seg = segments.layout(runs, device)
    geo = _layout(runs, device, TUNING)
    ids = seg.ids()
    flat = torch.cat([r.reshape(-1) for r in rows])
    xs, perm = seg.sort(flat, ids)
    sums = torch.zeros(seg.count, dtype=torch.float64, device=device)
    shift = sums.index_add_(0, ids, xs.to(torch.float64)).div_(seg.lengths)
    lam = segment_strengths(rows, lams, device)
    if isinstance(lam, float):
        lam = torch.full((1,), lam, dtype=torch.float64, device=device)
    h = _tiles(xs, lam, shift, True, geo)
    del xs
    info = _levels(h, 0, geo)
    out = torch.empty_like(flat)
    _slopes(h, info, shift, out, perm, False, geo, ids)
    parts = out.split([b * d for b, d in runs])
    return [part.view(b, d) for part, (b, d) in zip(parts, runs, strict=True)]


def _isotonic_fake(y: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(y)


def _prox_rows_fake(
    x: torch.Tensor, lam: torch.Tensor, with_z: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    zs = torch.empty(x.shape if with_z else (0,), dtype=torch.float64, device=x.device)
    return torch.empty_like(x), perm, zs


def _custom_op(name: str, impl: Callable[..., Any], fake: Callable[..., Any]) -> Any:
    if INTERPRET:  # wrap_triton cannot trace interpreted kernels: an opaque op with a fake
        op = torch.library.custom_op(f"weightshare::{name}", mutates_args=())(impl)
        op.register_fake(fake)
        return op
    return torch.library.triton_op(f"weightshare::{name}", mutates_args=())(impl)


_isotonic_op = _custom_op("isotonic_triton", _isotonic_impl, _isotonic_fake)
_prox_rows_op = _custom_op("prox_rows_triton", _prox_rows_impl, _prox_rows_fake)


# ---------------------------------------------------------------------------------------------
# Entry points


def isotonic_triton(y: torch.Tensor) -> torch.Tensor:
    r"""Row-wise non-decreasing isotonic regression with the tiled Triton hull kernels.

    Args:
        y: a contiguous ``(B, n)`` float32 or float64 tensor, ``n >= 1``, on CUDA (or on the CPU
            under ``TRITON_INTERPRET=1``).

    Returns:
        A new ``(B, n)`` tensor of ``y``'s dtype and device; float64 accumulation, no host
        synchronization, ``⌈log_K⌈(n+1)/T⌉⌉ + 4`` launches (``mean`` and a scan included).
    """
    check_rows(y, "isotonic_triton")
    check_device(y)
    out: torch.Tensor = _isotonic_op(y.contiguous())
    return out


def prox_rows_triton(
    x: torch.Tensor, lam: float | torch.Tensor, with_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The whole prox of each row of ``x`` (sort, ramp, hull merge, slopes, cast, unsort).

    Args:
        x: a ``(B, d)`` float16/bfloat16/float32/float64 tensor, ``d >= 2``, on CUDA (or on the
            CPU under ``TRITON_INTERPRET=1``).
        lam: the strength: a float, or a tensor of one strength or one per row.
        with_z: also return the sorted float64 prox values (for the backward pass); else an
            empty tensor takes their place (``8·B·d`` bytes less at the peak).

    Returns:
        ``(out, perm, zs)``: the prox rows (``x``'s dtype), the sort permutation (int64) and the
        sorted float64 prox values (or an empty tensor).
    """
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"prox_rows_triton expects a (B, d) tensor, d >= 2, got {tuple(x.shape)}")
    if x.dtype not in _IN_DTYPES:
        raise TypeError(f"prox_rows_triton expects a float dtype, got {x.dtype}")
    check_device(x)
    if isinstance(lam, torch.Tensor):
        lam_t = lam.to(device=x.device, dtype=torch.float64).reshape(-1).contiguous()
        if lam_t.numel() not in (1, x.shape[0]):
            raise ValueError(f"lam has {lam_t.numel()} strengths for {x.shape[0]} rows")
    else:
        lam_t = torch.full((1,), float(lam), dtype=torch.float64, device=x.device)
    result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _prox_rows_op(
        x.contiguous(), lam_t, with_z
    )
    return result


class TritonBackend(Backend):
    """The "triton" backend: the whole prox of a row set is one fused custom op."""

    def __init__(self) -> None:
        super().__init__("triton", isotonic_triton)

    def check_device(self, t: torch.Tensor) -> None:
        check_device(t)

    def prox_rows(
        self, rows: torch.Tensor, lam: float | torch.Tensor, with_z: bool = True
    ) -> RowsResult:
        if not is_active(rows.shape[1], lam):
            return super().prox_rows(rows, lam, with_z)
        return prox_rows_triton(rows, lam, with_z)

    def prox_ragged(
        self, rows: list[torch.Tensor], lams: list[float | torch.Tensor]
    ) -> list[torch.Tensor]:
        """Row sets of different lengths go through one tiled pipeline over their concatenation
        (``prox_ragged_triton``): no padding at all."""
        return prox_ragged_triton(rows, lams)


BACKEND = TritonBackend()
