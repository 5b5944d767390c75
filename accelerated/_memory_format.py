"""The memory format of a weight (``channels_last`` stays ``channels_last``, spec STORE-10)."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(t: Tensor) -> torch.memory_format:
    """``channels_last`` (4-D) or ``channels_last_3d`` (5-D) when ``t`` is stored so, and not
    also plain contiguous; else ``contiguous_format``."""
    if t.is_contiguous() or t.dim() not in (4, 5):
        return torch.contiguous_format
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return fmt if t.is_contiguous(memory_format=fmt) else torch.contiguous_format


def in_format(t: Tensor, fmt: torch.memory_format) -> Tensor:
    """``t`` in the memory format ``fmt`` (``t`` itself when it already is)."""
    if fmt == torch.contiguous_format or t.is_contiguous(memory_format=fmt):
        return t
    return t.contiguous(memory_format=fmt)
