r"""Hash tables, balance and the weight map in torch (spec page ``hashing``).

The SplitMix64 hash runs in int64 with two's-complement wrap-around; logical right shifts are
arithmetic shifts followed by a mask, and the unsigned residue is taken through ``z >>> 1``. The
tables are bit-equal to :mod:`weightshare.reference.hashing` on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import _checks as checks
from ._bucket_sum import bucket_sum, gather
from .reference._args import (
    check_alpha,
    check_buckets,
    check_conv2d,
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
_STREAM_INDEX, _STREAM_SIGN, _STREAM_CATEGORICAL, _STREAM_OFFSET = 1, 2, 3, 4

Device = torch.device | str | None


def _signed(u: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``u``."""
    return u - (1 << 64) if u >= 1 << 63 else u


# ---------------------------------------------------------------------------------------------
# SplitMix64 in int64


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of the 64 bits of ``z`` by ``0 < s < 64``."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _srl(z, 30)) * _signed(_M1)
    z = (z ^ _srl(z, 27)) * _signed(_M2)
    return z ^ _srl(z, 31)


def _stream_key(seed: int, stream: int) -> int:
    z = (seed + _GAMMA * (stream + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _hash64(seed: int, stream: int, n: int, device: Device) -> torch.Tensor:
    """The 64 hash bits of flat indices ``0 .. n-1`` as int64 (two's complement)."""
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device) * _signed(_GAMMA)
    return _mix(z + _signed(_stream_key(seed, stream)))


def _umod(z: torch.Tensor, k: int) -> torch.Tensor:
    """The residue of the unsigned 64-bit ``z`` modulo ``1 <= k <= 2**62``."""
    return ((_srl(z, 1) % k) * 2 + (z & 1)) % k


def _unit_uniforms(seed: int, stream: int, n: int, device: Device) -> torch.Tensor:
    return _srl(_hash64(seed, stream, n, device), 11).to(torch.float64) * 2.0**-53


# ---------------------------------------------------------------------------------------------
# tables


def uniform(
    shape: int | Sequence[int], num_buckets: int, *, seed: int = 0, device: Device = None
) -> torch.Tensor:
    r"""The HashedNets table: $H_i = h(s, 1, i) \bmod K$ (spec HASH-3).

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        seed: The hash seed, an int in $[0, 2^{64})$.
        device: Where to build the table (default: the current default device).

    Returns:
        An int64 tensor of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    return _umod(_hash64(s, _STREAM_INDEX, math.prod(dims), device), k).reshape(dims)


def sign(shape: int | Sequence[int], *, seed: int = 0, device: Device = None) -> torch.Tensor:
    r"""The HashedNets sign table: $+1$ where the top hash bit is 0, else $-1$ (spec HASH-4).

    Args:
        shape: The virtual weight's shape (positive ints).
        seed: The hash seed, an int in $[0, 2^{64})$.
        device: Where to build the table.

    Returns:
        An int8 tensor of ``shape`` with entries in ``{-1, +1}``.
    """
    dims, s = check_shape(shape), check_seed(seed)
    negative = _hash64(s, _STREAM_SIGN, math.prod(dims), device) < 0
    return (1 - 2 * negative.to(torch.int8)).reshape(dims)


def _dirichlet_cdf(num_buckets: int, alpha: float, seed: int) -> np.ndarray:
    """Cumulative $p \\sim \\mathrm{Dirichlet}(\\alpha 1_K)$ from NumPy's PCG64, last entry 1."""
    rng = np.random.Generator(np.random.PCG64(seed))
    cdf = np.cumsum(rng.dirichlet(np.full(num_buckets, alpha, dtype=np.float64)))
    cdf[-1] = 1.0
    return cdf


def dirichlet(
    shape: int | Sequence[int],
    num_buckets: int,
    *,
    alpha: float,
    seed: int = 0,
    device: Device = None,
) -> torch.Tensor:
    r"""The Dirichlet hash: $p \sim \mathrm{Dir}(\alpha 1_K)$ once, $H_i \sim p$ i.i.d. (HASH-5).

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        alpha: The concentration $\alpha > 0$ (finite); small is unbalanced, large is uniform.
        seed: The seed of both the Dirichlet draw and the categorical stream.
        device: Where to build the table.

    Returns:
        An int64 tensor of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    a = check_alpha(alpha)
    u = _unit_uniforms(s, _STREAM_CATEGORICAL, math.prod(dims), device)
    cdf = torch.from_numpy(_dirichlet_cdf(k, a, s)).to(u.device)
    return torch.searchsorted(cdf, u, right=True).reshape(dims)


def neighborhood(
    shape: int | Sequence[int],
    num_buckets: int,
    *,
    radius: int,
    seed: int = 0,
    device: Device = None,
) -> torch.Tensor:
    r"""The Neighborhood hash: $H_i = (i \bmod K + \delta_i) \bmod K$, $\delta_i \in \{-r..r\}$.

    Spec HASH-6; $r = 0$ gives the deterministic balanced base table $i \bmod K$.

    Args:
        shape: The virtual weight's shape (positive ints).
        num_buckets: $K \ge 1$.
        radius: The offset radius $r \ge 0$ (an int at most $2^{60}$).
        seed: The hash seed, an int in $[0, 2^{64})$.
        device: Where to build the table.

    Returns:
        An int64 tensor of ``shape`` with entries in ``[0, num_buckets)``.
    """
    dims, k, s = check_shape(shape), check_buckets(num_buckets), check_seed(seed)
    r = check_radius(radius)
    n = math.prod(dims)
    base = torch.arange(n, dtype=torch.int64, device=device) % k
    delta = _umod(_hash64(s, _STREAM_OFFSET, n, device), 2 * r + 1) - r
    return ((base + delta) % k).reshape(dims)


def dense(shape: int | Sequence[int], *, device: Device = None) -> torch.Tensor:
    r"""The identity table $H_i = i$ (C order): a dense weight as a hash, $K$ = numel (HASH-7).

    Args:
        shape: The weight's shape (positive ints).
        device: Where to build the table.

    Returns:
        An int64 tensor of ``shape`` holding ``0 .. numel - 1``.
    """
    dims = check_shape(shape)
    return torch.arange(math.prod(dims), dtype=torch.int64, device=device).reshape(dims)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    input_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    device: Device = None,
) -> tuple[torch.Tensor, int]:
    r"""A conv2d (no groups) as a table over its unrolled matrix; bucket $K-1$ is zero (HASH-8).

    Args:
        in_channels: $C_{in} \ge 1$.
        out_channels: $C_{out} \ge 1$.
        kernel_size: $(k_h, k_w)$ or one int for both.
        input_size: The input's $(H, W)$ or one int for both.
        stride: $(s_h, s_w) \ge 1$.
        padding: $(p_h, p_w) \ge 0$ (zero padding).
        dilation: $(d_h, d_w) \ge 1$.
        device: Where to build the table.

    Returns:
        ``(index, num_buckets)``: an int64 tensor of shape $(C_{out} H' W', C_{in} H W)$ and
        $K = C_{out} C_{in} k_h k_w + 1$.
    """
    cin, cout, kh, kw, h, w, sh, sw, ph, pw, dh, dw, ho, wo = check_conv2d(
        in_channels, out_channels, kernel_size, input_size, stride, padding, dilation
    )
    zero = cout * cin * kh * kw
    grids = torch.meshgrid(
        *(torch.arange(n, device=device) for n in (cout, ho, wo, cin, kh, kw)), indexing="ij"
    )
    o, yo, xo, c, a, b = (g.reshape(-1) for g in grids)
    y, x = sh * yo - ph + dh * a, sw * xo - pw + dw * b
    keep = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    row = ((o * ho + yo) * wo + xo)[keep]
    col = ((c * h + y) * w + x)[keep]
    bucket = (((o * cin + c) * kh + a) * kw + b)[keep]
    index = torch.full((cout * ho * wo, cin * h * w), zero, dtype=torch.int64, device=device)
    index[row, col] = bucket
    return index, zero + 1


# ---------------------------------------------------------------------------------------------
# balance and the weight map


def _index(index: object, num_buckets: int, what: str = "index") -> torch.Tensor:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype == torch.bool or index.dtype.is_floating_point or index.dtype.is_complex:
        raise TypeError(f"{what} must be an integer tensor, got dtype {index.dtype}")
    if index.numel() == 0:
        raise ValueError(f"{what} must not be empty, got shape {tuple(index.shape)}")
    bad = int(((index < 0) | (index >= num_buckets)).sum())
    if bad:
        raise ValueError(f"{what} has {bad} entries outside [0, {num_buckets})")
    return index.long()


def _sign(sign_table: object, index: torch.Tensor) -> torch.Tensor | None:
    if sign_table is None:
        return None
    if not isinstance(sign_table, torch.Tensor):
        raise TypeError(f"sign must be a torch.Tensor or None, got {type(sign_table).__name__}")
    if sign_table.dtype == torch.bool or sign_table.dtype.is_complex:
        raise TypeError(f"sign must be a real tensor of -1/+1, got dtype {sign_table.dtype}")
    if sign_table.shape != index.shape:
        raise ValueError(
            f"sign has shape {tuple(sign_table.shape)}, the index has shape {tuple(index.shape)}"
        )
    bad = int(((sign_table != 1) & (sign_table != -1)).sum())
    if bad:
        raise ValueError(f"sign has {bad} entries that are not -1 or +1")
    return sign_table


def entropy(index: torch.Tensor, num_buckets: int, *, normalized: bool = False) -> torch.Tensor:
    r"""Balance: the Shannon entropy (nats) of the bucket loads $q_k = n_k / N$ (spec HASH-9).

    Args:
        index: An integer table with entries in ``[0, num_buckets)`` (not empty).
        num_buckets: $K \ge 1$.
        normalized: Return $\mathrm{Ent}(H) / \log K \in [0, 1]$ instead (1 when $K = 1$).

    Returns:
        A 0-d float64 tensor on ``index``'s device.
    """
    k = check_buckets(num_buckets)
    h = _index(index, k)
    q = torch.bincount(h.reshape(-1), minlength=k).to(torch.float64) / h.numel()
    ent: torch.Tensor = (
        0.0 - torch.special.xlogy(q, q).sum()
    )  # 0.0 - x keeps +0.0 for one full bucket
    if not normalized:
        return ent
    return torch.ones_like(ent) if k == 1 else ent / math.log(k)


def materialize(
    values: torch.Tensor, index: torch.Tensor, sign: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The virtual weight $W = \xi \odot w[H]$, differentiable in ``values`` (spec HASH-1).

    Args:
        values: The bucket values $w$, a float tensor of shape ``(K,)``.
        index: The table $H$ (ints in ``[0, K)``), of the weight's shape.
        sign: The sign table $\xi$ (entries -1/+1) of ``index``'s shape, or ``None`` for $+1$.

    Returns:
        The dense weight, of ``index``'s shape and ``values``' dtype and device.
    """
    w = checks.check_float_values(values, "values")
    if w.ndim != 1:
        raise ValueError(f"values must be a vector of shape (K,), got shape {tuple(w.shape)}")
    h = _index(index, w.shape[0])
    return gather(w, h, _sign(sign, h))


def materialize_grad(
    grad_weight: torch.Tensor,
    index: torch.Tensor,
    num_buckets: int,
    sign: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The bucket gradient $g_k = \sum_{i: H_i = k} \xi_i G_i$: a scatter-add (spec HASH-10).

    Args:
        grad_weight: $G = \partial L / \partial W$, a float tensor of ``index``'s shape.
        index: The table $H$ (ints in ``[0, K)``).
        num_buckets: $K \ge 1$.
        sign: The sign table $\xi$ (entries -1/+1) of ``index``'s shape, or ``None``.

    Returns:
        The gradient with respect to the values, shape ``(K,)``, ``grad_weight``'s dtype.
    """
    k = check_buckets(num_buckets)
    g = checks.check_float_values(grad_weight, "grad_weight")
    h = _index(index, k)
    if g.shape != h.shape:
        raise ValueError(
            f"grad_weight has shape {tuple(g.shape)}, the index has shape {tuple(h.shape)}"
        )
    return bucket_sum(g, h, _sign(sign, h), None, None, k)


# ---------------------------------------------------------------------------------------------
# table choice for layers

HashFn = Callable[..., torch.Tensor]
HASHES = ("uniform", "dirichlet", "neighborhood", "dense")


def make_table(
    shape: tuple[int, ...],
    num_buckets: int,
    hash: str | HashFn,
    seed: int,
    device: Device,
    hash_kwargs: dict[str, Any],
) -> torch.Tensor:
    """The index table of a layer: a named hash or ``hash(shape, K, seed=, device=, **kw)``."""
    k = check_buckets(num_buckets)
    if callable(hash):
        table = hash(shape, k, seed=seed, device=device, **hash_kwargs)
        if not isinstance(table, torch.Tensor) or tuple(table.shape) != shape:
            got = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"the hash callable must return a tensor of shape {shape}, got {got}")
        return _index(table, k, "the hash callable's table").to(device)
    if hash == "uniform":
        return uniform(shape, k, seed=seed, device=device, **hash_kwargs)
    if hash == "dirichlet":
        return dirichlet(shape, k, seed=seed, device=device, **hash_kwargs)
    if hash == "neighborhood":
        return neighborhood(shape, k, seed=seed, device=device, **hash_kwargs)
    if hash == "dense":
        if hash_kwargs:
            raise TypeError(f"hash='dense' takes no keyword arguments, got {sorted(hash_kwargs)}")
        if k != math.prod(shape):
            raise ValueError(
                f"hash='dense' needs num_buckets == numel of the weight shape {shape}, got {k}"
            )
        return dense(shape, device=device)
    raise ValueError(f"hash must be one of {HASHES} or a callable, got {hash!r}")
