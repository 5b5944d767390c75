r"""Hashed layers and the ``hashed`` parametrization (spec page ``hashing``, HASH-11 .. HASH-15).

Each stores only the $K$ bucket values as a parameter; the index table (and the sign table) are
non-persistent buffers rebuilt from the recipe (``_hash_recipe``), and the dense weight
$W = \xi \odot w[H]$ is rebuilt by a gather in every forward; its backward is the deterministic
bucket sum of ``_bucket_sum`` (HASH-10, HASH-19).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ._hash_recipe import HashTables
from ._hashing import HashFn
from ._hashing import entropy as _entropy
from .reference._args import check_int

__all__ = ["Hashed", "HashedConv2d", "HashedLinear", "hashed"]


def _check_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")


class _HashedWeight(HashTables):
    """Shared state and behaviour of the hashed layers."""

    values: nn.Parameter

    def _build(self, dtype: torch.dtype | None, *tables: Any) -> None:
        """Check ``dtype``, build the tables (``HashTables._make_tables(*tables)``), the values."""
        _check_dtype(dtype)
        self._make_tables(*tables)
        self.values = nn.Parameter(
            torch.empty(self.num_buckets, device=self.index.device, dtype=dtype)
        )

    @property
    def weight(self) -> torch.Tensor:
        r"""The materialized dense weight $\xi \odot w[H]$ (differentiable in ``values``)."""
        return self._weight_map(self.values)

    def entropy(self, *, normalized: bool = False) -> torch.Tensor:
        """The balance of the index table (spec HASH-9), a 0-d float64 tensor.

        Args:
            normalized: Divide by $\\log K$.

        Returns:
            The entropy of the bucket loads in nats (or normalized to [0, 1]).
        """
        return _entropy(self.index, self.num_buckets, normalized=normalized)

    def _reset(self, fan_in: int, bias: torch.Tensor | None) -> None:
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.values, -bound, bound)
        if bias is not None:
            nn.init.uniform_(bias, -bound, bound)

    def _repr_hash(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in sorted(self.hash_kwargs.items()))
        return (
            f"num_buckets={self.num_buckets}, hash={self.hash!r}{extra}, seed={self.seed}, "
            f"signed={self.signed}"
        )


class HashedLinear(_HashedWeight):
    r"""A linear layer whose $(out, in)$ weight is read from $K$ buckets (HashedNets / ArbNets).

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample.
        num_buckets: $K$, the number of free weight values.
        hash: ``"uniform"`` (HashedNets), ``"dirichlet"`` (needs ``alpha=``),
            ``"neighborhood"`` (needs ``radius=``), ``"dense"`` ($K$ = in·out) or a callable
            ``hash(shape, num_buckets, *, seed, device, **hash_kwargs) -> index``.
        seed: The seed of the index and sign tables.
        signed: Use the HashedNets sign table $\xi$.
        bias: Learn an additive bias (not hashed).
        device: The device of the parameters and tables.
        dtype: The floating dtype of the parameters.
        **hash_kwargs: Extra arguments of the hash (``alpha``, ``radius``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_buckets: int,
        *,
        hash: str | HashFn = "uniform",
        seed: int = 0,
        signed: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **hash_kwargs: Any,
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1, got weight shape "
                f"{(self.out_features, self.in_features)}"
            )
        shape = (self.out_features, self.in_features)
        self._build(dtype, shape, num_buckets, hash, seed, signed, device, hash_kwargs)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Values and bias ~ U(±1/√in_features): $W_{ij}$ has nn.Linear's init law."""
        self._reset(self.in_features, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the materialized weight."""
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"{self._repr_hash()}, bias={self.bias is not None}"
        )


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class HashedConv2d(_HashedWeight):
    r"""A conv2d whose $(C_{out}, C_{in}/g, k_h, k_w)$ kernel is read from $K$ buckets.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        kernel_size: $(k_h, k_w)$ or one int.
        num_buckets: $K$, the number of free kernel values.
        stride: As in ``torch.nn.Conv2d``.
        padding: As in ``torch.nn.Conv2d`` (ints, a pair or ``"same"``/``"valid"``).
        dilation: As in ``torch.nn.Conv2d``.
        groups: As in ``torch.nn.Conv2d``.
        padding_mode: As in ``torch.nn.Conv2d``: ``"zeros"``, ``"reflect"``, ``"replicate"`` or
            ``"circular"``.
        hash: As in :class:`HashedLinear`; ``"dense"`` needs $K$ = numel of the kernel.
        seed: The seed of the index and sign tables.
        signed: Use the HashedNets sign table $\xi$.
        bias: Learn an additive bias (not hashed).
        device: The device of the parameters and tables.
        dtype: The floating dtype of the parameters.
        **hash_kwargs: Extra arguments of the hash (``alpha``, ``radius``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        num_buckets: int,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        hash: str | HashFn = "uniform",
        seed: int = 0,
        signed: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **hash_kwargs: Any,
    ) -> None:
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.groups = check_int(groups, "groups")
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(ks) != 2:
            raise ValueError(f"kernel_size must be an int or a pair, got {kernel_size!r}")
        self.kernel_size = (check_int(ks[0], "kernel_size"), check_int(ks[1], "kernel_size"))
        if min(self.in_channels, self.out_channels, self.groups, *self.kernel_size) < 1:
            raise ValueError(
                "in_channels, out_channels, groups and kernel_size must be >= 1, got "
                f"{(self.in_channels, self.out_channels, self.groups, self.kernel_size)}"
            )
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"in_channels ({self.in_channels}) and out_channels ({self.out_channels}) must "
                f"be divisible by groups ({self.groups})"
            )
        self.stride, self.padding, self.dilation = stride, padding, dilation
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._build(dtype, shape, num_buckets, hash, seed, signed, device, hash_kwargs)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Values and bias ~ U(±1/√fan_in), fan_in = $C_{in}/g \cdot k_h k_w$ (nn.Conv2d's law)."""
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        self._reset(fan_in, self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``F.conv2d`` with the materialized kernel (after ``F.pad`` for non-zero padding)."""
        padding = self.padding
        if self.padding_mode != "zeros":
            input, padding = F.pad(input, self._pads(), mode=self.padding_mode), 0
        return F.conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
        )

    def _pads(self) -> tuple[int, int, int, int]:
        """``F.pad``'s (left, right, top, bottom) for ``self.padding``, as ``nn.Conv2d`` pads."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0, 0, 0)
            dh, dw = (self.dilation,) * 2 if isinstance(self.dilation, int) else self.dilation
            th, tw = dh * (self.kernel_size[0] - 1), dw * (self.kernel_size[1] - 1)
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        ph, pw = (self.padding,) * 2 if isinstance(self.padding, int) else self.padding
        return (pw, pw, ph, ph)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, padding_mode={self.padding_mode!r}, {self._repr_hash()}, "
            f"bias={self.bias is not None}"
        )


class Hashed(HashTables):
    r"""The parametrization $w \mapsto \xi \odot w[H]$ from $(K,)$ values to a weight's shape.

    Args:
        shape: The weight's shape.
        num_buckets: $K$.
        hash: As in :class:`HashedLinear`.
        seed: The seed of the tables.
        signed: Use the sign table.
        device: The device of the tables.
        hash_kwargs: Extra arguments of the hash.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        num_buckets: int,
        *,
        hash: str | HashFn = "uniform",
        seed: int = 0,
        signed: bool = True,
        device: Any = None,
        hash_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self._make_tables(self.shape, num_buckets, hash, seed, signed, device, hash_kwargs or {})

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_buckets={self.num_buckets}, signed={self.sign is not None}"

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """The dense weight from the bucket values."""
        return self._weight_map(values)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        r"""The least-squares values: $w_k$ = mean of $\xi_i W_i$ over bucket $k$ (0 if empty)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(
                f"the assigned weight has shape {tuple(weight.shape)}, expected {self.shape}"
            )
        flat = weight.reshape(-1) if self.sign is None else (weight * self.sign).reshape(-1)
        idx = self.index.reshape(-1).long()
        sums = torch.zeros(self.num_buckets, dtype=weight.dtype, device=weight.device)
        sums = sums.index_add(0, idx, flat)
        counts = torch.bincount(idx, minlength=self.num_buckets).clamp_min(1)
        return sums / counts.to(weight.dtype)

    def first_members(self, weight: torch.Tensor) -> torch.Tensor:
        r"""$\xi_j W_j$ at each bucket's first member $j$ in C order (0 for an empty bucket)."""
        n = self.index.numel()
        idx = self.index.reshape(-1).long()
        first = torch.full((self.num_buckets,), n, dtype=torch.int64, device=idx.device)
        first = first.scatter_reduce(0, idx, torch.arange(n, device=idx.device), reduce="amin")
        taken = first.clamp_max(n - 1)
        vals = weight.reshape(-1)[taken]
        if self.sign is not None:
            vals = vals * self.sign.reshape(-1)[taken].to(vals.dtype)
        return torch.where(first < n, vals, torch.zeros_like(vals))


def hashed(
    module: nn.Module,
    name: str = "weight",
    *,
    num_buckets: int,
    hash: str | HashFn = "uniform",
    seed: int = 0,
    signed: bool = True,
    **hash_kwargs: Any,
) -> nn.Module:
    r"""Share ``module.<name>`` through a hash table: only $K$ values remain trainable.

    Registers :class:`Hashed` with ``torch.nn.utils.parametrize`` (``unsafe=True``, since it
    changes the shape). The values start as $\xi_j W_j$ at each bucket's first member $j$ (C order),
    so every weight entry keeps the module's initial distribution; assigning
    ``module.<name> = W`` later stores the least-squares (bucket-mean) values.

    Args:
        module: The module that owns the tensor.
        name: The parameter's name.
        num_buckets: $K$.
        hash: As in :class:`HashedLinear`.
        seed: The seed of the tables.
        signed: Use the HashedNets sign table $\xi$.
        **hash_kwargs: Extra arguments of the hash (``alpha``, ``radius``).

    Returns:
        ``module``, parametrized in place.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already parametrized")
    weight = getattr(module, name, None)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"{type(module).__name__}.{name} must be floating, got {weight.dtype}")
    if weight.ndim == 0:
        raise ValueError(f"{type(module).__name__}.{name} has shape (); it needs a dimension")
    param = Hashed(
        tuple(weight.shape),
        num_buckets,
        hash=hash,
        seed=seed,
        signed=signed,
        device=weight.device,
        hash_kwargs=hash_kwargs,
    )
    with torch.no_grad():
        initial = param.first_members(weight.detach())
    parametrize.register_parametrization(module, name, param, unsafe=True)
    with torch.no_grad():
        module.parametrizations[name].original.copy_(initial)  # type: ignore[index, union-attr]
    return module
