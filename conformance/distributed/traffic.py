"""A dispatch mode that counts the collectives run under it and the bytes they bring in."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

_COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd")


class Traffic(TorchDispatchMode):
    """Counts the collectives run while active, and the bytes this rank receives from others."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.bytes_in = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace in _COLLECTIVE_NAMESPACES and "wait" not in func.__name__:
            name = func.__name__.split(".")[0]
            if name != "_wrap_tensor_autograd":
                self.ops.append(name)
                self.bytes_in += _received(name, args)
        return out


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, list | tuple):
        return sum(_nbytes(y) for y in x)
    return 0


def _received(name: str, args: tuple) -> int:
    """Bytes that arrive from other ranks in one collective (the payload, not the algorithm's)."""
    if name == "all_gather_into_tensor":  # funcol: (input, group_size, group_name)
        return _nbytes(args[0]) * (int(args[1]) - 1)
    if name == "allgather_":  # c10d: (output lists, inputs, ...)
        return _nbytes(args[0]) - _nbytes(args[1])
    if name == "_allgather_base_":  # c10d: (output, input, ...)
        return _nbytes(args[0]) - _nbytes(args[1])
    if name == "alltoall_base_":  # c10d: (output, input, group, output splits, input splits, ...)
        out, group, splits = args[0], dist.ProcessGroup.unbox(args[2]), list(args[3])
        mine = group.rank()
        if not splits:
            return _nbytes(out) * (group.size() - 1) // group.size()
        row = out.numel() // max(sum(splits), 1) * out.element_size()
        return row * (sum(splits) - splits[mine])
    return _nbytes(args[0])  # broadcasts, reductions: one buffer
