"""Every argument and tensor check of the torch package: the one place its error text is written.

The words come from :mod:`weightshare.reference._args` (shared with the reference), so a problem
reads the same in both packages: NaN/inf with its count and the tensor's name, a negative or
non-finite strength, a dtype, a shape, a dim. Static checks (types, shapes, dims) never read a
value; :func:`check_values` reads one stacked count per device, and is skipped where a host read
is impossible or unwanted (:func:`should_validate`: while ``torch.compile`` traces, during CUDA
graph capture and inside functorch transforms).
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .reference._args import check_nonneg_finite as check_nonneg_finite
from .reference._args import check_real as check_real
from .reference._args import dtype_message, negative_message
from .reference._args import nonfinite_message as nonfinite_message

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor
    from typing_extensions import TypeIs

#: A strength: a number, or a tensor broadcastable to the batch shape.
Lam = float | torch.Tensor

# ---------------------------------------------------------------------------------------------
# DTensor detection (torch.distributed.tensor is imported on first use only)

_DTENSOR: Any = None


def dtensor_api(submodule: str = "") -> ModuleType:
    """``torch.distributed.tensor`` (or one of its submodules), imported on first use: the one
    loader of the package's optional distributed dependency."""
    return importlib.import_module("torch.distributed.tensor" + (f".{submodule}" * bool(submodule)))


def dtensor_class() -> Any:
    """The ``DTensor`` class, imported on first use (None where torch.distributed is missing)."""
    global _DTENSOR
    if _DTENSOR is None:
        _DTENSOR = dtensor_api().DTensor if torch.distributed.is_available() else False
    return _DTENSOR or None


def is_dtensor(t: object) -> TypeIs[DTensor]:
    """Whether ``t`` is a ``DTensor`` (a plain tensor or Parameter answers without an import)."""
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:
        return False
    cls = dtensor_class()
    return cls is not None and isinstance(t, cls)


# ---------------------------------------------------------------------------------------------
# Static checks: types, dtypes, dims, shapes


def check_tensor(t: object, name: str) -> torch.Tensor:
    """``t``, which must be a tensor, a Parameter or a ``DTensor`` (TypeError otherwise)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if (
        type(t) not in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()
        and not is_dtensor(t)
    ):
        raise TypeError(
            f"{name} must be a torch.Tensor, a Parameter or a DTensor, got the tensor subclass "
            f"{type(t).__module__}.{type(t).__qualname__}"
        )
    return t


def check_float(t: object, name: str) -> torch.Tensor:
    """``t``, which must be a tensor (see :func:`check_tensor`) of a real floating dtype."""
    t = check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(dtype_message(name, t.dtype))
    return t


def normalize_dim(t: torch.Tensor, dim: object, what: str = "a tensor") -> int | None:
    """``dim`` as a non-negative index into ``t`` (None stays None); IndexError if out of range.

    A 0-d tensor counts as one vector of length 1, so ``dim`` may be 0 or -1 for it.
    """
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
    dim = int(dim)
    ndim = max(t.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"dim {dim} is out of range for {what} of shape {tuple(t.shape)} "
            f"(expected in [{-ndim}, {ndim - 1}])"
        )
    return dim % ndim


def batch_shape(t: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    """Shape of the batch of vectors: () for ``dim=None``, else the shape without ``dim``."""
    if dim is None or t.dim() == 0:
        return ()
    return tuple(s for i, s in enumerate(t.shape) if i != dim)


def check_broadcast(
    t: torch.Tensor, shape: Sequence[int], name: str, target: str | None = None
) -> None:
    """ValueError unless ``t``'s shape broadcasts to ``shape``; TypeError for a non-real ``t``."""
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    try:
        ok = torch.broadcast_shapes(t.shape, tuple(shape)) == torch.Size(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to {target or str(tuple(shape))}"
        )


def check_strength(lam: object, t: torch.Tensor, dim: int | None, name: str = "lam") -> Lam:
    """A strength for the vectors of ``t`` along ``dim``: a number (NumPy scalars included;
    finite and >= 0) as a float, or a real tensor broadcastable to the batch shape (its values
    are checked by :func:`check_values`)."""
    if isinstance(lam, torch.Tensor):
        shape = batch_shape(t, dim)
        check_broadcast(
            lam,
            shape,
            name,
            f"the batch shape {shape} of the vectors (input shape {tuple(t.shape)}, dim={dim})",
        )
        return lam
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(lam).__name__}")
    return check_nonneg_finite(lam, name)


def check_scalar_strength(value: object, name: str) -> float:
    """A strength that must be one number (a real number or a one-element real tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must be a real scalar, got a tensor of shape {tuple(value.shape)}"
            )
        return check_nonneg_finite(value.item(), name)
    return check_nonneg_finite(check_real(value, name), name)


def strength_list(lams: object, count: int, name: str = "lams") -> list[object]:
    """``lams`` as one strength per tensor: one number or tensor for all, or a sequence."""
    if isinstance(lams, numbers.Real | torch.Tensor) and not isinstance(lams, bool):
        return [lams] * count
    if isinstance(lams, str | bytes) or not isinstance(lams, Sequence):
        raise TypeError(
            f"{name} must be a float, a tensor or a sequence of them, got {type(lams).__name__}"
        )
    out = list(lams)
    if len(out) != count:
        raise ValueError(f"{name} has {len(out)} entries for {count} tensors")
    return out


def tensor_list(tensors: object, name: str = "tensors") -> list[torch.Tensor]:
    """``tensors`` as a list; a tensor is refused (it would be taken as a list of its rows)."""
    if isinstance(tensors, torch.Tensor):
        raise TypeError(
            f"{name} must be a sequence of tensors, got one tensor of shape "
            f"{tuple(tensors.shape)}; wrap it in a list"
        )
    if isinstance(tensors, str | bytes) or not hasattr(tensors, "__iter__"):
        raise TypeError(f"{name} must be a sequence of tensors, got {type(tensors).__name__}")
    return list(tensors)


# ---------------------------------------------------------------------------------------------
# Value checks: NaN/inf and negative strengths (one host read)


def should_validate(t: torch.Tensor) -> bool:
    """False while compiling, capturing a CUDA graph, inside a functorch transform, and for meta
    tensors (which hold no values)."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


class _Count(NamedTuple):
    """A pending count on the device, the name it concerns and how its message reads."""

    value: torch.Tensor
    name: str
    negative: bool


def check_values(
    tensors: Sequence[torch.Tensor],
    names: Sequence[str],
    lams: Sequence[object] = (),
    lam_names: Sequence[str] = (),
) -> None:
    """ValueError for NaN/inf in a tensor, or NaN/inf or a negative value in a tensor strength.

    CPU tensors are counted on the host; the counts of the others are stacked into one tensor
    per device and read with a single host transfer.
    """
    pending: list[_Count] = []
    for t, name in zip(tensors, names, strict=True):
        if not t.numel():
            continue
        if type(t) not in (torch.Tensor, torch.nn.Parameter):  # a DTensor: counted by torch
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(nonfinite_message(name, bad))
        elif t.device.type == "cpu":
            bad = count_nonfinite_host(t)
            if bad:
                raise ValueError(nonfinite_message(name, bad))
        else:
            pending.append(_Count((~torch.isfinite(t)).sum().reshape(1), name, False))
    for lam, name in zip(lams, lam_names, strict=True):
        if isinstance(lam, torch.Tensor) and lam.numel():
            pending.append(_Count((~torch.isfinite(lam)).sum().reshape(1), name, False))
            pending.append(_Count((lam < 0).sum().reshape(1), name, True))
    if not pending:
        return
    device = pending[0].value.device
    counts = torch.cat([p.value.to(device) for p in pending]).tolist()
    for p, count in zip(pending, counts, strict=True):
        if count:
            message = negative_message if p.negative else nonfinite_message
            raise ValueError(message(p.name, int(count)))


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` and the count if ``t`` holds NaN/inf (reads the device)."""
    check_values([t.detach()], [name])


def check_float_values(t: object, name: str) -> torch.Tensor:
    """``t``, a tensor (any subclass) of a real floating dtype without NaN/inf: the check of the
    structures (the count is skipped where :func:`should_validate` says no)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(dtype_message(name, t.dtype))
    if should_validate(t):
        check_finite(t, name)
    return t


_EXPONENT_BITS = {torch.bfloat16: (torch.int16, 0x7F80)}


def count_nonfinite_host(t: torch.Tensor) -> int:
    """NaN/inf count of a CPU tensor through NumPy (much faster than torch on a busy CPU)."""
    t = t.detach().resolve_neg().resolve_conj()
    if t.dtype in _EXPONENT_BITS:
        int_dtype, mask = _EXPONENT_BITS[t.dtype]
        bits = t.view(int_dtype).numpy()
        return int(np.count_nonzero((bits & mask) == mask))
    if not t.is_floating_point():
        return 0
    arr = t.numpy()
    if np.isfinite(arr).all():
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def nonfinite(name: str, count: int) -> ValueError:
    """The ValueError for ``count`` NaN/inf entries in ``name`` (for checks made elsewhere)."""
    return ValueError(nonfinite_message(name, count))
