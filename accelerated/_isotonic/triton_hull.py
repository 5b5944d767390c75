r"""The "triton" isotonic kernel: the lower-hull merge of ``hull`` as a few fused Triton kernels.

Same mathematics as ``hull`` (spec: ALG page): the isotonic solution is the slope of the lower
convex hull of the float64 prefix-sum points $P_k = (k, S_k)$, $k = 0..n$. Points $0..M-1$,
$M = 2^L \ge n$, are merged bottom-up in aligned blocks; point $M$ (the last real point when
$n = M$, a pad point otherwise) joins in one final merge with a one-point right half, so the
buffers hold $M + 1$ points, never $2M$. Per level, two launches:

1. ``_bridge_kernel``: one lane per (row, block) runs the whole simultaneous bridge search
   (``2·log₂h + 1`` probe steps) in registers, gathering links and ordinates from global memory;
2. ``_splice_kernel``: one lane per point; points strictly between a block's bridge ends get the
   bridge ends as their previous/next vertex.

Around them: ``_prepare_kernel`` (float64 cast, ramp, centring, padding) before torch's
``cumsum``, and ``_slopes_kernel`` (each element's hull-edge slope, the final merge applied on
the fly, cast to the output dtype, scattered through the sort permutation). A prox of a
``(B, d)`` batch is ``2·⌈log₂ d⌉ + 4`` launches, whatever the data: no host synchronization, no
data-dependent shape.

The kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter when
``TRITON_INTERPRET=1`` was set before this module was imported. Each public function is a torch
custom op (``torch.library.triton_op`` + ``wrap_triton``, so ``torch.compile`` traces into the
kernels); under the interpreter, where ``wrap_triton`` cannot trace, an opaque custom op with the
same schema and a fake implementation stands in.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import triton
import triton.language as tl
from torch.utils._python_dispatch import _disable_current_modes

from .backend import Backend, RowsResult, is_active
from .common import ceil_log2, check_rows

#: True when the kernels below were defined for Triton's interpreter (CPU tensors).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: lanes per program: elementwise kernels, and bridge searches
_BLOCK = 1024
_BRIDGE_BLOCK = 128

_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _lanes(total, BLOCK: tl.constexpr):
    """This program's lane indices (int64) into ``total`` work items, and which are real."""
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return g, g < total


@triton.jit
def _prepare_kernel(
    x_ptr,
    lam_ptr,
    shift_ptr,
    pad_ptr,
    z_ptr,
    total,
    n,
    width,
    lam_stride,
    RAMP: tl.constexpr,
    SORTED_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """z[r, 0] = 0; z[r, k] = y[r, k-1] - shift[r] for k <= n; pad - shift[r] after.

    ``y = x - lam * ramp`` (``RAMP``) or ``x``, with ``lam`` clamped to ``max(x) - min(x)`` for
    sorted rows (``SORTED_PAD``, PROX-21); the pad is then ``max(x) + lam``
    (``SORTED_PAD``: an upper bound of every ``y``, since the ramp is >= -1) or ``pad_ptr[r]``.
    """
    g, live = _lanes(total, BLOCK)
    row = g // width
    k = g % width
    shift = tl.load(shift_ptr + row, mask=live, other=0.0)
    # a float64 strength per row, or one for all (scalar kernel arguments would be float32)
    lam_r = tl.load(lam_ptr + row * lam_stride, mask=live, other=0.0)
    if SORTED_PAD:  # sorted rows: clamp λ to max - min, the same prox (PROX-21)
        top = tl.load(x_ptr + row * n + (n - 1), mask=live, other=0.0).to(tl.float64)
        low = tl.load(x_ptr + row * n, mask=live, other=0.0).to(tl.float64)
        lam_r = tl.minimum(lam_r, top - low)
    e = k - 1
    real = live & (k >= 1) & (k <= n)
    y = tl.load(x_ptr + row * n + e, mask=real, other=0.0).to(tl.float64)
    if RAMP:
        y = y - lam_r * ((2.0 * e.to(tl.float64) - (n - 1)) / (n - 1))
    if SORTED_PAD:
        pad = top + lam_r
    else:
        pad = tl.load(pad_ptr + row, mask=live, other=0.0).to(tl.float64)
    z = tl.where(k == 0, 0.0, tl.where(real, y, pad) - shift)
    tl.store(z_ptr + g, z, mask=live)


@triton.jit
def _link(ptr, base, pos, live, IDENTITY: tl.constexpr):
    """The stored link at ``pos``, or ``pos`` itself before any merge has run."""
    if IDENTITY:
        link = pos
    else:
        link = tl.load(ptr + base + pos, mask=live, other=0).to(tl.int64)
    return link  # one return statement: Triton's compiler wants no early return


@triton.jit
def _below(dx_c, dy_c, dx, dy):
    """Strictly below the line from the probe a (the origin) to the probe c."""
    return dx_c * dy < dy_c * dx


@triton.jit
def _bridge_kernel(
    s_ptr,
    last_ptr,
    nxt_ptr,
    a_out,
    c_out,
    total,
    blocks,
    width,
    h,
    hc,
    steps,
    IDENTITY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Bridge (a*, c*) of every block: left half [f, f+h), right half [f+h, f+h+hc), f = 2hb."""
    g, live = _lanes(total, BLOCK)
    row = g // blocks
    base = row * width
    first = (g % blocks) * (2 * h)
    lower_a = first
    upper_a = first + h - 1
    lower_c = first + h
    upper_c = first + h + hc - 1
    gap = (first + h).to(tl.float64) - 0.5  # strictly between the halves
    lo_a, hi_a, lo_c, hi_c = lower_a, upper_a, lower_c, upper_c
    pa = lo_a
    pc = lo_c
    for _ in range(steps):
        pa = _link(last_ptr, base, (lo_a + hi_a) >> 1, live, IDENTITY)
        pc = _link(last_ptr, base, (lo_c + hi_c) >> 1, live, IDENTITY)
        # neighbours on the same hull; at a hull's end the probe itself (never "below")
        la = tl.maximum(_link(last_ptr, base, tl.maximum(pa - 1, 0), live, IDENTITY), lower_a)
        ra = tl.minimum(
            _link(nxt_ptr, base, tl.minimum(pa + 1, width - 1), live, IDENTITY), upper_a
        )
        lc = tl.maximum(_link(last_ptr, base, pc - 1, live, IDENTITY), lower_c)
        rc = tl.minimum(
            _link(nxt_ptr, base, tl.minimum(pc + 1, width - 1), live, IDENTITY), upper_c
        )
        sa = tl.load(s_ptr + base + pa, mask=live, other=0.0)
        dy_la = tl.load(s_ptr + base + la, mask=live, other=0.0) - sa
        dy_ra = tl.load(s_ptr + base + ra, mask=live, other=0.0) - sa
        dy_c = tl.load(s_ptr + base + pc, mask=live, other=0.0) - sa
        dy_lc = tl.load(s_ptr + base + lc, mask=live, other=0.0) - sa
        dy_rc = tl.load(s_ptr + base + rc, mask=live, other=0.0) - sa
        dx_la = (la - pa).to(tl.float64)
        dx_ra = (ra - pa).to(tl.float64)
        dx_c = (pc - pa).to(tl.float64)
        dx_lc = (lc - pa).to(tl.float64)
        dx_rc = (rc - pa).to(tl.float64)
        a_left = _below(dx_c, dy_c, dx_la, dy_la)
        a_right = _below(dx_c, dy_c, dx_ra, dy_ra)
        c_left = _below(dx_c, dy_c, dx_lc, dy_lc)
        c_right = _below(dx_c, dy_c, dx_rc, dy_rc)
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
    # once both intervals are single vertices (or earlier) the probes are the bridge
    tl.store(a_out + g, pa.to(a_out.dtype.element_ty), mask=live)
    tl.store(c_out + g, pc.to(c_out.dtype.element_ty), mask=live)


@triton.jit
def _splice_kernel(
    last_ptr,
    nxt_ptr,
    a_ptr,
    c_ptr,
    total,
    blocks,
    width,
    span,
    FIRST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Points strictly between a block's bridge ends link to them (``FIRST``: write every link)."""
    g, live = _lanes(total, BLOCK)
    row = g // width
    p = g % width
    merged = live & (p < width - 1)  # point M is not in any block until the final merge
    blk = row * blocks + p // span
    a = tl.load(a_ptr + blk, mask=merged, other=0).to(tl.int64)
    c = tl.load(c_ptr + blk, mask=merged, other=0).to(tl.int64)
    inside = merged & (p > a) & (p < c)
    if FIRST:
        tl.store(last_ptr + g, tl.where(inside, a, p).to(last_ptr.dtype.element_ty), mask=live)
        tl.store(nxt_ptr + g, tl.where(inside, c, p).to(nxt_ptr.dtype.element_ty), mask=live)
    else:
        tl.store(last_ptr + g, a.to(last_ptr.dtype.element_ty), mask=inside)
        tl.store(nxt_ptr + g, c.to(nxt_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _round_bf16_bits(v):
    """float64 -> the bits of the nearest bfloat16 (via float32, as torch rounds), as int16."""
    bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _slopes_kernel(
    s_ptr,
    last_ptr,
    nxt_ptr,
    a_final_ptr,
    shift_ptr,
    perm_ptr,
    out_ptr,
    z_ptr,
    total,
    n,
    width,
    IDENTITY: tl.constexpr,
    PERM: tl.constexpr,
    WRITE_Z: tl.constexpr,
    OUT_KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Element i gets the slope of the hull edge over [i, i+1], plus the row's shift."""
    g, live = _lanes(total, BLOCK)
    row = g // n
    i = g % n
    base = row * width
    left = _link(last_ptr, base, i, live, IDENTITY)
    right = _link(nxt_ptr, base, tl.minimum(i + 1, width - 2), live, IDENTITY)
    # the final merge with point M, applied on the fly: past its bridge end, one edge to M
    a_final = tl.load(a_final_ptr + row, mask=live, other=0).to(tl.int64)
    past = i >= a_final
    left = tl.where(past, a_final, left)
    right = tl.where(past, width - 1, right)
    rise = tl.load(s_ptr + base + right, mask=live, other=0.0) - tl.load(
        s_ptr + base + left, mask=live, other=0.0
    )
    value = rise / (right - left).to(tl.float64) + tl.load(shift_ptr + row, mask=live, other=0.0)
    if WRITE_Z:
        tl.store(z_ptr + g, value, mask=live)
    dest = g
    if PERM:
        dest = row * n + tl.load(perm_ptr + g, mask=live, other=0)
    if OUT_KIND == 0:  # float32, float64: one rounding
        tl.store(out_ptr + dest, value.to(out_ptr.dtype.element_ty), mask=live)
    elif OUT_KIND == 1:  # float16: through float32, as torch converts
        tl.store(out_ptr + dest, value.to(tl.float32).to(out_ptr.dtype.element_ty), mask=live)
    else:  # bfloat16, as bits (the interpreter's own float32 -> bfloat16 cast truncates)
        tl.store(out_ptr + dest, _round_bf16_bits(value), mask=live)


# ---------------------------------------------------------------------------------------------
# Launching (every launch goes through here, so the benchmarks can count them)

_RECORDERS: list[tuple[list[str], bool]] = []


def _launch(kernel: Any, total: int, block: int, *args: Any, **meta: Any) -> None:
    run = True
    for names, launch in _RECORDERS:
        names.append(kernel.fn.__name__)
        run = run and launch
    if not run:
        return
    grid = (triton.cdiv(total, block),)
    if INTERPRET:  # the interpreter's own tensor copies are not device work: hide them
        with _disable_current_modes():
            kernel[grid](*args, BLOCK=block, **meta)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, BLOCK=block, **meta)


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


def _hull(
    z: torch.Tensor,
    shift: torch.Tensor,
    n: int,
    out: torch.Tensor,
    perm: torch.Tensor | None,
    with_z: bool,
) -> torch.Tensor:
    """Hull merge of the padded point buffers ``z`` (``(B, M + 1)``, prefix-summed in place),
    slopes written into ``out`` (scattered through ``perm`` if given). Returns the float64 values
    in point order if ``with_z`` (the clusters the backward pass needs), else an empty tensor."""
    rows, width = z.shape
    m = width - 1
    levels = ceil_log2(m)
    s = z.cumsum_(dim=1)
    itype = torch.int32 if width < 2**31 else torch.int64
    last = torch.empty((rows, width), dtype=itype, device=z.device)
    nxt = torch.empty_like(last)
    # level 1 merges point pairs, which keeps both: the searches start at level 2
    for level in range(2, levels + 1):
        h = 1 << (level - 1)
        blocks = m // (2 * h)
        a = torch.empty((rows, blocks), dtype=itype, device=z.device)
        c = torch.empty_like(a)
        first = level == 2
        _launch(
            _bridge_kernel, rows * blocks, _BRIDGE_BLOCK,
            s, last, nxt, a, c, rows * blocks, blocks, width, h, h, 2 * (level - 1) + 1,
            IDENTITY=first,
        )  # fmt: skip
        _launch(
            _splice_kernel, rows * width, _BLOCK,
            last, nxt, a, c, rows * width, blocks, width, 2 * h,
            FIRST=first,
        )  # fmt: skip
    merged = levels >= 2
    a_final = torch.empty((rows, 1), dtype=itype, device=z.device)
    c_final = torch.empty_like(a_final)
    _launch(
        _bridge_kernel, rows, _BRIDGE_BLOCK,
        s, last, nxt, a_final, c_final, rows, 1, width, m, 1, 2 * levels + 1,
        IDENTITY=not merged,
    )  # fmt: skip
    zs = torch.empty((rows, n) if with_z else (0,), dtype=torch.float64, device=z.device)
    kind = _OUT_KIND.get(out.dtype, 0)
    _launch(
        _slopes_kernel, rows * n, _BLOCK,
        s, last, nxt, a_final, shift, a_final if perm is None else perm,
        out.view(torch.int16) if kind == 2 else out, zs, rows * n, n, width,
        IDENTITY=not merged, PERM=perm is not None, WRITE_Z=with_z, OUT_KIND=kind,
    )  # fmt: skip
    return zs


def _points(rows: int, n: int, device: torch.device) -> torch.Tensor:
    """The ``(B, M + 1)`` float64 point buffer, ``M = 2^⌈log₂ n⌉``."""
    return torch.empty((rows, (1 << ceil_log2(n)) + 1), dtype=torch.float64, device=device)


def _isotonic_impl(y: torch.Tensor) -> torch.Tensor:
    rows, n = y.shape
    out = torch.empty_like(y)
    shift = y.mean(dim=1, dtype=torch.float64)
    pad = y.amax(dim=1)
    z = _points(rows, n, y.device)
    _launch(
        _prepare_kernel, z.numel(), _BLOCK,
        y, shift, shift, pad, z, z.numel(), n, z.shape[1], 0,
        RAMP=False, SORTED_PAD=False,
    )  # fmt: skip
    _hull(z, shift, n, out, None, False)
    return out


def _prox_rows_impl(
    x: torch.Tensor, lam: torch.Tensor, with_z: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, n = x.shape
    xs, perm = torch.sort(x, dim=1)
    shift = xs.mean(dim=1, dtype=torch.float64)  # the ramp has mean zero
    z = _points(rows, n, x.device)
    _launch(
        _prepare_kernel, z.numel(), _BLOCK,
        xs, lam, shift, shift, z, z.numel(), n, z.shape[1], int(lam.numel() > 1),
        RAMP=True, SORTED_PAD=True,
    )  # fmt: skip
    del xs
    out = torch.empty_like(x)
    return out, perm, _hull(z, shift, n, out, perm, with_z)


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
    r"""Row-wise non-decreasing isotonic regression with the fused Triton hull kernels.

    Args:
        y: a contiguous ``(B, n)`` float32 or float64 tensor, ``n >= 1``, on CUDA (or on the CPU
            under ``TRITON_INTERPRET=1``).

    Returns:
        A new ``(B, n)`` tensor of ``y``'s dtype and device; float64 accumulation, no host
        synchronization, ``2·⌈log₂ n⌉ + 3`` launches (two torch reductions and a scan included).
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


BACKEND = TritonBackend()
