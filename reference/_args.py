"""Argument checks shared by the reference and the torch implementations (Python and NumPy).

Only argument validation lives here; each side implements the math (hashes, tables, builds,
products, prox) on its own. The error types and messages are part of the specification: the
conformance tests match on them, for both packages alike.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeGuard

import numpy as np

# ---------------------------------------------------------------------------------------------
# generic


def is_int(x: object) -> TypeGuard[int]:
    """Whether ``x`` is a Python ``int`` (``bool`` excluded)."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_int(value: object, what: str) -> int:
    """``value`` as an int; any integral number but ``bool`` (NumPy integers included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return operator.index(value)


# The words of every error, shared by both packages: the same problem reads the same everywhere.


def nonfinite_message(name: str, count: int) -> str:
    """The error text for ``count`` NaN/inf entries in ``name``."""
    return f"{name} has {count} non-finite value(s) (NaN or inf)"


def negative_message(name: str, count: int) -> str:
    """The error text for ``count`` negative entries in the strengths ``name``."""
    return f"{name} has {count} negative value(s); need >= 0"


def dtype_message(name: str, dtype: object) -> str:
    """The error text for a ``name`` whose dtype is not a real floating one."""
    return f"{name} must have a real floating dtype, got {dtype}"


def check_real(x: Any, name: str) -> float:
    """``float(x)`` for a real number (NumPy scalars included, ``bool`` excluded)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


def check_nonneg_finite(x: Any, name: str) -> float:
    """``float(x)``, which must be finite and >= 0."""
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_float_array(w: Any, name: str) -> np.ndarray:
    """``np.asarray(w)``, which must be a real floating array without NaN/inf."""
    arr = np.asarray(w)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(dtype_message(name, arr.dtype))
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(nonfinite_message(name, bad))
    return arr


# ---------------------------------------------------------------------------------------------
# hashing (spec page ``hashing``)

#: The largest number of buckets a hash table may have.
MAX_BUCKETS = 1 << 62
_MAX_SEED = (1 << 64) - 1


def check_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """A weight shape: one positive int or a non-empty sequence of them."""
    dims = (shape,) if isinstance(shape, int | numbers.Integral) else tuple(shape)
    if not dims:
        raise ValueError("shape must have at least one dimension, got ()")
    dims = tuple(check_int(d, "every dimension of shape") for d in dims)
    if any(d < 1 for d in dims):
        raise ValueError(f"shape must hold positive ints, got {dims}")
    return dims


def check_buckets(num_buckets: object) -> int:
    """A bucket count $K$ in $[1, 2^{62}]$."""
    k = check_int(num_buckets, "num_buckets")
    if not 1 <= k <= MAX_BUCKETS:
        raise ValueError(f"num_buckets must be in [1, 2**62], got {k}")
    return k


def check_seed(seed: object) -> int:
    """A hash seed in $[0, 2^{64})$."""
    s = check_int(seed, "seed")
    if not 0 <= s <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64), got {s}")
    return s


def check_pair(value: object, what: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``low``, as a pair."""
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)  # type: ignore[arg-type]
    if len(pair) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    a, b = (check_int(v, what) for v in pair)
    if a < low or b < low:
        raise ValueError(f"{what} must be >= {low}, got {value!r}")
    return a, b


def check_alpha(alpha: object) -> float:
    """A Dirichlet concentration: a real number (not ``bool``), finite and > 0, as a float."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    value = float(alpha)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    return value


def check_radius(radius: object) -> int:
    """A neighborhood radius: an int in $[0, 2^{60}]$."""
    r = check_int(radius, "radius")
    if not 0 <= r <= 1 << 60:
        raise ValueError(f"radius must be in [0, 2**60], got {r}")
    return r


class Conv2dGeometry(NamedTuple):
    """The checked sizes of a conv2d table (height/width pairs; ``ho``, ``wo``: the output)."""

    cin: int
    cout: int
    kh: int
    kw: int
    h: int
    w: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    ho: int
    wo: int


def check_conv2d(
    in_channels: object,
    out_channels: object,
    kernel_size: object,
    input_size: object,
    stride: object,
    padding: object,
    dilation: object,
) -> Conv2dGeometry:
    """Validate the arguments of a conv2d table and compute its output size."""
    cin, cout = check_int(in_channels, "in_channels"), check_int(out_channels, "out_channels")
    if cin < 1 or cout < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {cin}, {cout}")
    kh, kw = check_pair(kernel_size, "kernel_size", 1)
    h, w = check_pair(input_size, "input_size", 1)
    (sh, sw), (ph, pw) = check_pair(stride, "stride", 1), check_pair(padding, "padding", 0)
    dh, dw = check_pair(dilation, "dilation", 1)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"the kernel {(kh, kw)} (dilation {(dh, dw)}) does not fit the padded input "
            f"{(h + 2 * ph, w + 2 * pw)}"
        )
    return Conv2dGeometry(cin, cout, kh, kw, h, w, sh, sw, ph, pw, dh, dw, ho, wo)


# ---------------------------------------------------------------------------------------------
# symmetry (spec page *Symmetry*)

#: The symmetry kinds; linear ones combine with ``+``, ``eigen`` stands alone.
KINDS = ("symmetric", "channel", "spatial", "quarter", "eightfold", "block4", "chunk", "eigen")
_KEYWORDS = {"chunk": {"chunks", "dim"}, "eigen": {"rank"}}
_SQUARE = ("symmetric", "channel", "quarter", "eightfold", "eigen")


def parse_kind(
    kind: str, shape: Sequence[int], kwargs: dict[str, Any]
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Validate ``kind``/``shape``/keywords; return the kind parts and the normalized keywords."""
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string, got {type(kind).__name__}")
    shape = tuple(int(s) for s in shape)
    parts = tuple(kind.split("+"))
    for part in parts:
        if part not in KINDS:
            raise ValueError(f"unknown symmetry kind {part!r}; expected one of {KINDS}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"kind {kind!r} repeats a part")
    if "eigen" in parts and len(parts) > 1:
        raise ValueError("kind 'eigen' cannot be combined with other kinds")
    allowed = set().union(*(_KEYWORDS.get(p, set()) for p in parts))
    unexpected = sorted(set(kwargs) - allowed)
    if unexpected:
        raise TypeError(f"kind {kind!r} takes no keyword(s) {unexpected}")
    if any(s < 1 for s in shape):
        raise ValueError(f"symmetry needs a non-empty weight, got shape {shape}")
    out: dict[str, Any] = {}
    for part in parts:
        if part in _SQUARE:
            need = 3 if part == "channel" else 2
            if len(shape) < need or shape[0] != shape[1]:
                what = "a conv weight (n, n, *kernel)" if part == "channel" else "(n, n, *taps)"
                raise ValueError(f"kind {part!r} needs a square weight {what}, got shape {shape}")
        elif part == "block4" and len(shape) < 2:
            raise ValueError(f"kind 'block4' needs a weight with ndim >= 2, got shape {shape}")
        elif part == "spatial" and (len(shape) != 4 or shape[2] != shape[3]):
            raise ValueError(
                f"kind 'spatial' needs a conv weight (out, in, k, k), got shape {shape}"
            )
        elif part == "chunk":
            if "chunks" not in kwargs:
                raise TypeError("kind 'chunk' needs the keyword chunks=c")
            chunks, dim = kwargs["chunks"], kwargs.get("dim", 0)
            if not is_int(chunks):
                raise TypeError(f"chunks must be an int, got {type(chunks).__name__}")
            if not is_int(dim):
                raise TypeError(f"dim must be an int, got {type(dim).__name__}")
            if not -len(shape) <= dim < len(shape):
                raise IndexError(f"dim {dim} out of range for shape {shape}")
            dim %= len(shape)
            if chunks < 1 or shape[dim] % chunks:
                raise ValueError(
                    f"chunks={chunks} must be >= 1 and divide shape[{dim}] of shape {shape}"
                )
            out.update(chunks=chunks, dim=dim)
        if part == "eigen":
            if "rank" not in kwargs:
                raise TypeError("kind 'eigen' needs the keyword rank=r")
            rank = kwargs["rank"]
            if not is_int(rank):
                raise TypeError(f"rank must be an int, got {type(rank).__name__}")
            if not 1 <= rank <= shape[0]:
                raise ValueError(f"rank {rank} out of range 1..{shape[0]} for shape {shape}")
            out["rank"] = rank
    return parts, out


# ---------------------------------------------------------------------------------------------
# factorization (spec page *Factorization (DWF)*)


def check_depth(depth: Any) -> int:
    """A factorization depth: an ``int`` (not ``bool``) >= 1."""
    if not is_int(depth):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return depth


def check_init(depth: Any, std: Any, eps: Any, truncate: bool) -> tuple[int, float, float, float]:
    r"""Validate a factor init's arguments: ``(depth, std, lo, hi)``, the bounds on $|u|$.

    With ``truncate`` the bounds are $\varepsilon^{1/D} < |u| < \min(1, (2\sigma_w)^{1/D})$
    (``eps=None`` means $\sigma_w/4$) and must not be empty; without, they are $(0, \infty)$.
    """
    depth = check_depth(depth)
    std = check_nonneg_finite(std, "std")
    if std == 0:
        raise ValueError("std must be > 0")
    if not truncate:
        return depth, std, 0.0, math.inf
    eps = std / 4 if eps is None else check_nonneg_finite(eps, "eps")
    lo, hi = eps ** (1.0 / depth), min(1.0, (2.0 * std) ** (1.0 / depth))
    if not lo < hi:
        raise ValueError(
            f"empty truncation interval ({lo:.3g}, {hi:.3g}) for std={std}, eps={eps}, "
            f"depth={depth}"
        )
    return depth, std, lo, hi
