r"""The host ("pava") backend: the prox pipeline on NumPy views (sort, ramp, SciPy PAVA, scatter).

``torch.sort`` on the CPU is several times slower than NumPy's SIMD sorts, and ``np.argsort`` is
itself about twice as slow as a values-only ``np.sort``. So the permutation comes from a
values-only sort of packed 64-bit keys: the order-preserving bit pattern of the value in the high
bits and the element's index in the low bits. float32 keys fit whole (exact). float64 keys lose
their lowest ⌈log₂ d⌉ bits; entries whose truncated keys tie may come out of order, and those
rare runs are re-sorted exactly afterwards. Batches are spread over a thread pool by rows (NumPy
and SciPy release the GIL in their kernels); a long vector is split by a one-level sample sort
when the machine has an idle core.
"""

from __future__ import annotations

import os
from collections.abc import Hashable

import numpy as np
import torch

from .backend import Backend, RowsResult
from .pava import in_worker, isotonic_pava, parallel_rows, pava_row_, pool, threads

#: From this length on, a single vector is sorted as several buckets on several threads.
SPLIT_MIN = 1 << 18

_SIGN64 = np.uint64(1 << 63)


def _idle_cores() -> float:
    """Cores the pool's extra threads would find idle (by the 1-minute load average).

    Splitting a vector costs a few extra passes, which only pay off when the threads get cores;
    the result is bit-identical either way (ties are ordered by index on both paths).
    """
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available on this platform
        load = 0.0
    return threads() - 1 - load


#: Elements per chunk of the streaming passes (keeps their temporaries small).
_CHUNK = 1 << 16


def subtract_ramp_(z: np.ndarray, lam: float) -> None:
    r"""``z -= lam * c`` in place with $c_k = (2k-d-1)/(d-1)$, $k = 1..d$ (nothing for d < 2)."""
    d = z.shape[0]
    if d < 2 or lam == 0.0:
        return
    for a in range(0, d, _CHUNK):
        b = min(d, a + _CHUNK)
        c = (2.0 * np.arange(a, b, dtype=np.float64) - (d - 1)) / (d - 1)
        z[a:b] -= lam * c


def collapse_clamp(sorted_row: np.ndarray, lam: float) -> float:
    """``min(lam, max - min)`` of a sorted row: the same prox (PROX-5), exact for a huge λ."""
    return min(lam, float(sorted_row[-1]) - float(sorted_row[0]))


def _keys_(x: np.ndarray, keys: np.ndarray, bits: int) -> None:
    """Write the order-preserving bit patterns of the float ``x`` into uint64 ``keys``, with the
    lowest ``bits`` bits cleared (float32 patterns fill the high 32 bits)."""
    if x.dtype == np.float32:
        u = x.view(np.uint32)
        flip = ((u.view(np.int32) >> 31).view(np.uint32)) | np.uint32(1 << 31)
        np.bitwise_xor(u, flip, out=flip)
        np.left_shift(flip, 32, out=keys, dtype=np.uint64)
        return
    u = x.view(np.uint64)
    np.right_shift(u.view(np.int64), 63, out=keys.view(np.int64))
    np.bitwise_or(keys, _SIGN64, out=keys)
    np.bitwise_xor(keys, u, out=keys)
    np.right_shift(keys, np.uint64(bits), out=keys)
    np.left_shift(keys, np.uint64(bits), out=keys)


def _index_bits(x: np.ndarray) -> int:
    return 32 if x.dtype == np.float32 else max(1, (x.shape[0] - 1).bit_length())


def sort_with_index_(x: np.ndarray, perm: np.ndarray, values: np.ndarray) -> None:
    """Ascending sort of the 1-D float32/float64 ``x``: ``perm`` (int32 or int64) and ``values``
    (float64, also the scratch space of the packed keys, so the sort needs no other buffer).

    ``x[perm]`` is non-decreasing; tied values may come in any order.
    """
    n = x.shape[0]
    keys = values.view(np.uint64)
    bits = _index_bits(x)
    if bits > 40:  # pragma: no cover - d > 2^40: too few key bits left, use a plain argsort
        perm[:] = np.argsort(x)
        values[:] = x[perm]
        return
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        _keys_(x[a:b], keys[a:b], bits)
        np.bitwise_or(keys[a:b], np.arange(a, b, dtype=np.uint64), out=keys[a:b])
    keys.sort()
    mask = np.uint64((1 << bits) - 1)
    for a in range(0, n, _CHUNK):  # chunk a:b of the keys is read before it is overwritten
        b = min(n, a + _CHUNK)
        perm[a:b] = keys[a:b] & mask
        values[a:b] = x[perm[a:b]]
    if x.dtype == np.float64 and n > 1:
        bad = np.flatnonzero(values[1:] < values[:-1])
        if bad.size:
            _resort_runs_(bad, bits, perm, values)


def _truncated(values: np.ndarray, bits: int) -> np.ndarray:
    keys = np.empty(values.shape[0], dtype=np.uint64)
    _keys_(values, keys, bits)
    return keys >> np.uint64(bits)


def _resort_runs_(bad: np.ndarray, bits: int, perm: np.ndarray, values: np.ndarray) -> None:
    """Re-sort exactly the runs of equal truncated keys that contain an inversion.

    The truncated keys of the sorted ``values`` are non-decreasing, so each run is found by
    widening a window around its inversion until the key changes on both sides.
    """
    n = values.shape[0]
    done = -1
    for p in bad.tolist():
        if p <= done:
            continue
        key = _truncated(values[p : p + 1], bits)[0]
        lo, hi, width = p, p + 2, 16
        while True:
            a, b = max(0, lo - width), min(n, hi + width)
            same = np.flatnonzero(_truncated(values[a:b], bits) == key) + a
            lo, hi = int(same[0]), int(same[-1]) + 1
            if (lo > a or a == 0) and (hi < b or b == n):
                break
            width *= 4
        order = np.argsort(values[lo:hi], kind="stable")
        perm[lo:hi] = perm[lo:hi][order]
        values[lo:hi] = values[lo:hi][order]
        done = hi - 1


def prox_rows(
    x: np.ndarray, lam: np.ndarray, out: np.ndarray, perm: np.ndarray, zs: np.ndarray
) -> None:
    """The prox of every row of ``x`` (``(B, d)``, C-contiguous), written to ``out``.

    Args:
        x: the input rows, float32 or float64.
        lam: float64 ``(B,)`` strengths.
        out: the output rows (may be ``x`` itself: every read of a row precedes its writes).
        perm: int32 or int64 ``(B, d)``: receives the ascending sort permutation of each row.
        zs: float64 ``(B, d)``: receives the sorted prox values (isotonic regression of z).
    """
    rows, d = x.shape
    if rows == 0 or d == 0:
        return
    if rows == 1 and d >= SPLIT_MIN and not in_worker() and _idle_cores() >= 1:
        _prox_long(x[0], float(lam[0]), out[0], perm[0], zs[0])
        return

    def work(a: int, b: int) -> None:
        for r in range(a, b):
            sort_with_index_(x[r], perm[r], zs[r])
            lam_r = collapse_clamp(zs[r], float(lam[r])) if d > 1 else 0.0
            if lam_r != 0.0:  # 0: the identity (a constant row is its own mean)
                subtract_ramp_(zs[r], lam_r)
                pava_row_(zs[r])
            out[r][perm[r]] = zs[r]

    parallel_rows(work, rows, x.size)


def _prox_long(x: np.ndarray, lam: float, out: np.ndarray, perm: np.ndarray, z: np.ndarray) -> None:
    """One long vector: sample sort (buckets sorted on several threads), one PAVA, scatter."""
    d = x.shape[0]
    parts = threads()
    sample = np.sort(x[:: max(1, d // 4096)])
    pivots = np.unique(sample[(np.arange(1, parts) * sample.size) // parts])
    # bucket j holds lower[j] <= x < upper[j]; count first so every bucket knows its offset
    below = [int(np.count_nonzero(x < p)) for p in pivots]
    offsets = [0, *below, d]
    lower = [-np.inf, *pivots]
    upper = [*pivots, np.inf]

    def sort_bucket(j: int) -> None:
        a, b = offsets[j], offsets[j + 1]
        if b == a:
            return
        idx = np.flatnonzero((x >= lower[j]) & (x < upper[j]))
        sort_with_index_(x[idx], perm[a:b], z[a:b])
        perm[a:b] = idx[perm[a:b]]

    futures = [pool().submit(sort_bucket, j) for j in range(len(offsets) - 1)]
    for f in futures:
        f.result()
    lam = collapse_clamp(z, lam)
    if lam != 0.0:
        subtract_ramp_(z, lam)
        pava_row_(z)
    out[perm] = z


# ---------------------------------------------------------------------------------------------
# The backend: torch tensors in and out (CUDA tensors go to the host and back)

_HOST_DTYPES = (torch.float32, torch.float64)


def check_host_data(t: torch.Tensor) -> None:
    """Errors for a tensor whose values NumPy cannot read: meta (TypeError), a ``vmap`` batch or
    a ``torch.compile`` trace (ValueError), each naming the method and the alternative."""
    if t.device.type == "meta":
        raise TypeError(
            "method='pava' computes on the tensor's values and a meta tensor has none; use "
            "method='hull' (or 'auto', which picks it there)"
        )
    if torch.compiler.is_compiling():
        raise ValueError(
            "method='pava' runs in NumPy, which torch.compile cannot trace; use method='auto' "
            "(it picks 'hull' while compiling) or method='hull'"
        )
    if torch._C._functorch.is_batchedtensor(t):
        raise ValueError(
            "method='pava' runs in NumPy, which torch.func.vmap cannot batch; use method='auto' "
            "(it picks a torch-op method inside vmap) or method='hull'"
        )


class HostBackend(Backend):
    """The "pava" backend: every row set on the host, spread over one thread pool."""

    def __init__(self) -> None:
        super().__init__("pava", isotonic_pava)

    def check_device(self, t: torch.Tensor) -> None:
        check_host_data(t)

    def group(self, rows: torch.Tensor) -> Hashable:
        return "host"  # any dtype and device: the host threads take them all at once

    def prox_rows(
        self, rows: torch.Tensor, lam: float | torch.Tensor, with_z: bool = True
    ) -> RowsResult:
        check_host_data(rows)
        b, d = rows.shape
        device, dtype = rows.device, rows.dtype
        x = rows.detach().to("cpu")
        if dtype not in _HOST_DTYPES:
            x = x.to(torch.float32)  # exact for float16 and bfloat16
        x = x.resolve_neg().contiguous()
        out_dtype = dtype if dtype in _HOST_DTYPES else torch.float64
        out = torch.empty((b, d), dtype=out_dtype)
        # int32 indices where they fit: the permutation is the largest buffer after the values
        perm = torch.empty((b, d), dtype=torch.int32 if d < 2**31 else torch.int64)
        zs = torch.empty((b, d), dtype=torch.float64)
        if isinstance(lam, torch.Tensor):
            lam_np = lam.detach().reshape(b).cpu().numpy()
        else:
            lam_np = np.full(b, lam)
        prox_rows(x.numpy(), lam_np, out.numpy(), perm.numpy(), zs.numpy())
        return out.to(device, dtype), perm.to(device), zs.to(device)

    def prox_packed(
        self, rows: list[torch.Tensor], lams: list[float | torch.Tensor]
    ) -> list[torch.Tensor]:
        """Large row sets one by one (each using every thread), small ones spread over the pool."""
        large = [
            i
            for i, r in enumerate(rows)
            if r.numel() >= SPLIT_MIN // 2 or threads() == 1 or in_worker()
        ]
        small = [i for i in range(len(rows)) if i not in set(large)]
        outs: list[torch.Tensor | None] = [None] * len(rows)
        for i in large:
            outs[i] = self.prox_rows(rows[i], lams[i])[0]
        if small:
            chunks: list[list[int]] = [[] for _ in range(threads())]
            loads = [0] * threads()
            for i in sorted(small, key=lambda i: -rows[i].numel()):
                j = loads.index(min(loads))
                chunks[j].append(i)
                loads[j] += rows[i].numel()

            def work(chunk: list[int]) -> list[torch.Tensor]:
                return [self.prox_rows(rows[i], lams[i])[0] for i in chunk]

            futures = [(chunk, pool().submit(work, chunk)) for chunk in chunks if chunk]
            for chunk, future in futures:
                for i, out in zip(chunk, future.result(), strict=True):
                    outs[i] = out
        return [out for out in outs if out is not None]


BACKEND = HostBackend()
