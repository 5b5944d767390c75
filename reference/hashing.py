r"""Reference hash tables for ArbNets / HashedNets (NumPy only; spec page ``hashing``).

A table is an integer array ``index`` with the virtual weight's shape whose entries are bucket ids
in ``[0, K)``, optionally with a ``sign`` table in ``{-1, +1}``; the weight is
$W = \xi \odot w[H]$. Every table is a pure function of its arguments: the integer hash is
SplitMix64 (spec HASH-2), computed here in ``uint64`` arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._args import MAX_BUCKETS as MAX_BUCKETS
from ._args import (
    check_alpha,
    check_buckets,
    check_conv2d,
    check_float_array,
    check_radius,
    check_seed,
    check_shape,
)

__all__ = [
    "conv2d",
    "dense",
    "dirichlet",
    "entropy",
    "materialize",
    "materialize_grad",
    "neighborhood",
    "sign",
    "uniform",
]

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

# stream tags: one independent SplitMix64 stream per use (spec HASH-2)
STREAM_INDEX = 1
STREAM_SIGN = 2
STREAM_CATEGORICAL = 3
STREAM_OFFSET = 4


# ---------------------------------------------------------------------------------------------
# the integer hash (spec HASH-2)


def _mix_int(z: int) -> int:
    """SplitMix64's finalizer on a Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int) -> int:
    r"""The key $k_t = \mathrm{mix}(s + \gamma (t+1))$ of stream ``t`` for ``seed``."""
    return _mix_int((seed + _GAMMA * (stream + 1)) & _MASK64)


def hash64(seed: int, stream: int, n: int) -> np.ndarray:
    r"""$h_i = \mathrm{mix}(k_t + \gamma (i+1)) \bmod 2^{64}$ for flat indices $i < n$ (uint64)."""
    key = np.uint64(stream_key(seed, stream))
    z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GAMMA) + key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def unit_uniforms(seed: int, stream: int, n: int) -> np.ndarray:
    """Uniforms in [0, 1) from the top 53 bits of the hash (float64, exact)."""
    return (hash64(seed, stream, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ---------------------------------------------------------------------------------------------
# tables


def uniform(shape: int | Sequence[int], num_buckets: int, *, seed: int = 0) -> np.ndarray:
    r"""The HashedNets table: $H_i = h(s, 1, i) \bmod K$ (spec HASH-3).

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        seed: The hash seed, an int in $[0, 2^{64})$.

    Returns:
        An int64 array of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    n = math.prod(dims)
    return (hash64(s, STREAM_INDEX, n) % np.uint64(k)).astype(np.int64).reshape(dims)


def sign(shape: int | Sequence[int], *, seed: int = 0) -> np.ndarray:
    r"""The HashedNets sign table: $\xi_i = 1 - 2\,\lfloor h(s, 2, i) / 2^{63} \rfloor$ (HASH-4).

    Args:
        shape: The virtual weight's shape (positive ints).
        seed: The hash seed, an int in $[0, 2^{64})$.

    Returns:
        An int8 array of ``shape`` with entries in ``{-1, +1}``.
    """
    dims, s = check_shape(shape), check_seed(seed)
    top = (hash64(s, STREAM_SIGN, math.prod(dims)) >> np.uint64(63)).astype(np.int8)
    return (1 - 2 * top).astype(np.int8).reshape(dims)


def dirichlet_probabilities(num_buckets: int, alpha: float, seed: int) -> np.ndarray:
    r"""$p \sim \mathrm{Dirichlet}(\alpha 1_K)$ from ``Generator(PCG64(seed))`` (HASH-5)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.dirichlet(np.full(num_buckets, alpha, dtype=np.float64))


def dirichlet(
    shape: int | Sequence[int], num_buckets: int, *, alpha: float, seed: int = 0
) -> np.ndarray:
    r"""The Dirichlet hash: $p \sim \mathrm{Dir}(\alpha 1_K)$ once, $H_i \sim p$ i.i.d. (HASH-5).

    $H_i$ is the smallest $k$ with $u_i < c_k$, where $c_k = \sum_{j \le k} p_j$ (with
    $c_{K-1} := 1$) and $u_i$ is the $i$-th uniform of the categorical stream.

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        alpha: The concentration $\alpha > 0$ (finite); small is unbalanced, large is uniform.
        seed: The seed of both the Dirichlet draw and the categorical stream.

    Returns:
        An int64 array of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    a = check_alpha(alpha)
    cdf = np.cumsum(dirichlet_probabilities(k, a, s))
    cdf[-1] = 1.0
    u = unit_uniforms(s, STREAM_CATEGORICAL, math.prod(dims))
    return np.searchsorted(cdf, u, side="right").astype(np.int64).reshape(dims)


def neighborhood(
    shape: int | Sequence[int], num_buckets: int, *, radius: int, seed: int = 0
) -> np.ndarray:
    r"""The Neighborhood hash: $H_i = (i \bmod K + \delta_i) \bmod K$, $\delta_i \in \{-r..r\}$.

    $\delta_i = (h(s, 4, i) \bmod (2r+1)) - r$; $r = 0$ gives the deterministic balanced base
    table $i \bmod K$ (spec HASH-6).

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        radius: The offset radius $r \ge 0$ (an int at most $2^{60}$).
        seed: The hash seed, an int in $[0, 2^{64})$.

    Returns:
        An int64 array of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    r = check_radius(radius)
    n = math.prod(dims)
    base = np.arange(n, dtype=np.int64) % k
    delta = (hash64(s, STREAM_OFFSET, n) % np.uint64(2 * r + 1)).astype(np.int64) - r
    return ((base + delta) % k).reshape(dims)


def dense(shape: int | Sequence[int]) -> np.ndarray:
    r"""The identity table $H_i = i$ (C order): a dense weight as a hash, $K$ = numel (HASH-7).

    Args:
        shape: The weight's shape (positive ints).

    Returns:
        An int64 array of ``shape`` holding ``0 .. numel - 1``.
    """
    dims = check_shape(shape)
    return np.arange(math.prod(dims), dtype=np.int64).reshape(dims)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    input_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> tuple[np.ndarray, int]:
    r"""A conv2d (no groups) as a table over its unrolled matrix (spec HASH-8).

    Rows are the flattened output $(o, y', x')$, columns the flattened input $(c, y, x)$ (C order).
    Entry ((o, y', x'), (c, y, x)) holds the kernel bucket
    $((o C_{in} + c) k_h + a) k_w + b$ when $y = s_h y' - p_h + d_h a$ and
    $x = s_w x' - p_w + d_w b$ for a tap $(a, b)$, and the **zero bucket** $K - 1$ otherwise.

    Args:
        in_channels: $C_{in} \ge 1$.
        out_channels: $C_{out} \ge 1$.
        kernel_size: $(k_h, k_w)$ or one int for both.
        input_size: The input's $(H, W)$ or one int for both.
        stride: $(s_h, s_w) \ge 1$.
        padding: $(p_h, p_w) \ge 0$ (zero padding).
        dilation: $(d_h, d_w) \ge 1$.

    Returns:
        ``(index, num_buckets)``: an int64 array of shape
        $(C_{out} H' W', C_{in} H W)$ and $K = C_{out} C_{in} k_h k_w + 1$; the weight is
        ``materialize(np.append(kernel.ravel(), 0.0), index)``.
    """
    cin, cout, kh, kw, h, w, sh, sw, ph, pw, dh, dw, ho, wo = check_conv2d(
        in_channels, out_channels, kernel_size, input_size, stride, padding, dilation
    )
    zero = cout * cin * kh * kw
    index = np.full((cout, ho, wo, cin, h, w), zero, dtype=np.int64)
    o, yo, xo, c, a, b = np.meshgrid(
        *(np.arange(n) for n in (cout, ho, wo, cin, kh, kw)), indexing="ij"
    )
    y, x = sh * yo - ph + dh * a, sw * xo - pw + dw * b
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    bucket = ((o * cin + c) * kh + a) * kw + b
    index[o[inside], yo[inside], xo[inside], c[inside], y[inside], x[inside]] = bucket[inside]
    return index.reshape(cout * ho * wo, cin * h * w), zero + 1


# ---------------------------------------------------------------------------------------------
# balance and the weight map


def _index(index: object, num_buckets: int) -> np.ndarray:
    arr = np.asarray(index)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"index must be an integer array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"index must not be empty, got shape {arr.shape}")
    bad = int(np.count_nonzero((arr < 0) | (arr >= num_buckets)))
    if bad:
        raise ValueError(f"index has {bad} entries outside [0, {num_buckets})")
    return arr.astype(np.int64, copy=False)


def _sign(sign_table: object, shape: tuple[int, ...]) -> np.ndarray | None:
    if sign_table is None:
        return None
    arr = np.asarray(sign_table)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"sign must be a numeric array of -1/+1, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"sign has shape {arr.shape}, the index has shape {shape}")
    bad = int(np.count_nonzero((arr != 1) & (arr != -1)))
    if bad:
        raise ValueError(f"sign has {bad} entries that are not -1 or +1")
    return arr


def entropy(index: np.ndarray, num_buckets: int, *, normalized: bool = False) -> float:
    r"""Balance: the Shannon entropy (nats) of the bucket loads $q_k = n_k / N$ (spec HASH-9).

    $\mathrm{Ent}(H) = -\sum_{k: q_k > 0} q_k \log q_k \in [0, \log K]$; the normalized form
    divides by $\log K$ (defined as 1 for $K = 1$).

    Args:
        index: An integer table with entries in ``[0, num_buckets)`` (not empty).
        num_buckets: $K \ge 1$.
        normalized: Return $\mathrm{Ent}(H) / \log K \in [0, 1]$ instead.

    Returns:
        The entropy as a Python float.
    """
    k = check_buckets(num_buckets)
    arr = _index(index, k)
    q = np.bincount(arr.ravel(), minlength=k) / arr.size
    q = q[q > 0]
    ent = float(-np.sum(q * np.log(q))) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not normalized:
        return ent
    return 1.0 if k == 1 else ent / math.log(k)


def materialize(
    values: np.ndarray, index: np.ndarray, sign: np.ndarray | None = None
) -> np.ndarray:
    r"""The virtual weight $W = \xi \odot w[H]$ (spec HASH-1).

    Args:
        values: The bucket values $w$, a float vector of shape ``(K,)``.
        index: The table $H$ (ints in ``[0, K)``), of the weight's shape.
        sign: The sign table $\xi$ (entries -1/+1) of ``index``'s shape, or ``None`` for $+1$.

    Returns:
        The dense weight, of ``index``'s shape and ``values``' dtype.
    """
    w = check_float_array(values, "values")
    if w.ndim != 1:
        raise ValueError(f"values must be a vector of shape (K,), got shape {w.shape}")
    h = _index(index, w.shape[0])
    xi = _sign(sign, h.shape)
    out: np.ndarray = w[h]
    return out if xi is None else (out * xi).astype(w.dtype, copy=False)


def materialize_grad(
    grad_weight: np.ndarray,
    index: np.ndarray,
    num_buckets: int,
    sign: np.ndarray | None = None,
) -> np.ndarray:
    r"""The bucket gradient $g_k = \sum_{i: H_i = k} \xi_i G_i$: a scatter-add (spec HASH-10).

    Args:
        grad_weight: $G = \partial L / \partial W$, a float array of ``index``'s shape.
        index: The table $H$ (ints in ``[0, K)``).
        num_buckets: $K \ge 1$.
        sign: The sign table $\xi$ (entries -1/+1) of ``index``'s shape, or ``None``.

    Returns:
        The gradient with respect to the values, shape ``(K,)``, ``grad_weight``'s dtype.
    """
    k = check_buckets(num_buckets)
    g = check_float_array(grad_weight, "grad_weight")
    h = _index(index, k)
    if g.shape != h.shape:
        raise ValueError(f"grad_weight has shape {g.shape}, the index has shape {h.shape}")
    xi = _sign(sign, h.shape)
    contrib = g if xi is None else g * xi
    out = np.zeros(k, dtype=g.dtype)
    np.add.at(out, h.ravel(), contrib.ravel().astype(g.dtype, copy=False))
    return out
