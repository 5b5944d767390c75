"""Input validation shared by the torch API: dtypes, dims, finiteness, strengths.

Validation is split from computation: the checks here may read one scalar from the device (the
count of bad values); the computations never do. The checks are skipped where a host read is
impossible or unwanted: while ``torch.compile`` traces, during CUDA graph capture and inside
functorch transforms (``vmap``, ``grad``).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch

from .reference._args import check_nonneg_finite

Lam = float | torch.Tensor


def check_float(t: torch.Tensor, name: str) -> None:
    """Raise TypeError unless ``t`` is a real floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        from ._distributed import check_plain

        check_plain(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a real floating dtype, got {t.dtype}")


def normalize_dim(t: torch.Tensor, dim: int | None) -> int | None:
    """``dim`` as a non-negative index into ``t`` (None stays None); IndexError if out of range."""
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__}")
    ndim = max(t.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"dim {dim} is out of range for a tensor of shape {tuple(t.shape)} "
            f"(expected in [{-ndim}, {ndim - 1}])"
        )
    return dim % ndim


def batch_shape(t: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    """Shape of the batch of vectors: () for ``dim=None``, else the shape without ``dim``."""
    if dim is None or t.dim() == 0:
        return ()
    return tuple(s for i, s in enumerate(t.shape) if i != dim)


def should_validate(t: torch.Tensor) -> bool:
    """False while compiling, capturing a CUDA graph or inside a functorch transform."""
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def check_lam_value(lam: Lam, t: torch.Tensor, dim: int | None, name: str = "lam") -> None:
    """Host-side checks of a strength: type, sign and finiteness of a number; shape of a tensor."""
    if isinstance(lam, torch.Tensor):
        if lam.is_complex() or lam.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {lam.dtype}")
        shape = batch_shape(t, dim)
        try:
            ok = torch.broadcast_shapes(lam.shape, shape) == torch.Size(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} of shape {tuple(lam.shape)} does not broadcast to the batch shape "
                f"{shape} of the vectors (input shape {tuple(t.shape)}, dim={dim})"
            )
        return
    if isinstance(lam, bool) or not isinstance(lam, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(lam).__name__}")
    check_nonneg_finite(lam, name)


def check_values(
    tensors: list[torch.Tensor], lams: list[Lam], names: list[str], lam_name: str = "lam"
) -> None:
    """Raise ValueError for NaN/inf in any tensor or a negative/non-finite tensor strength.

    All counts are stacked into one tensor per device and read with a single host transfer.
    """
    counts: list[torch.Tensor] = []
    labels: list[str] = []
    for t, name in zip(tensors, names, strict=True):
        if t.numel() and t.device.type == "cpu":
            bad = _count_nonfinite_host(t)
            if bad:
                raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
        elif t.numel():
            counts.append((~torch.isfinite(t)).sum().reshape(1))
            labels.append(name)
    for i, lam in enumerate(lams):
        if isinstance(lam, torch.Tensor) and lam.numel():
            lam_name_i = lam_name if len(lams) == 1 else f"{lam_name}[{i}]"
            counts.append((~torch.isfinite(lam)).sum().reshape(1))
            labels.append(f"{lam_name_i}:nonfinite")
            counts.append((lam < 0).sum().reshape(1))
            labels.append(f"{lam_name_i}:negative")
    if not counts:
        return
    device = counts[0].device
    values = torch.cat([c.to(device) for c in counts]).tolist()
    for label, count in zip(labels, values, strict=True):
        if not count:
            continue
        if label.endswith(":nonfinite"):
            raise ValueError(f"{label.split(':')[0]} has {count} non-finite value(s) (NaN or inf)")
        if label.endswith(":negative"):
            raise ValueError(f"{label.split(':')[0]} has {count} negative value(s); need >= 0")
        raise ValueError(f"{label} has {count} non-finite value(s) (NaN or inf)")


_EXPONENT_BITS = {torch.bfloat16: (torch.int16, 0x7F80)}


def _count_nonfinite_host(t: torch.Tensor) -> int:
    """NaN/inf count of a CPU tensor through NumPy (much faster than torch on a busy CPU)."""
    if t.dtype in _EXPONENT_BITS:
        int_dtype, mask = _EXPONENT_BITS[t.dtype]
        bits = t.detach().resolve_neg().view(int_dtype).numpy()
        return int(np.count_nonzero((bits & mask) == mask))
    arr = t.detach().resolve_neg().numpy()
    if np.isfinite(arr).all():
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))
