"""No silent training loss: stepping an optimizer over Parameters ``load`` dropped warns.

``ws.load`` and ``ws.compress`` keep a weight's ``Parameter`` object whenever its structure
stores one tensor (it is reshaped in place), but a weight that becomes factorized (its factors
are new Parameters) or stops being factorized (the weight is a new Parameter) drops the old
objects from the model. An optimizer built before holds the dropped ones: its ``step()`` would
train nothing the model uses. :func:`tracking` records them (weakly, with their names), and a
global optimizer step pre-hook warns once per optimizer that holds any (spec page *Storage*).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["tracking"]

#: id of a dropped Parameter -> (a weak reference to it, its name in the model)
_DROPPED: dict[int, tuple[weakref.ref[Tensor], str]] = {}
_WARNED: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
_HOOK: list[Any] = []


@contextmanager
def tracking(root: nn.Module, what: str) -> Iterator[None]:
    """Record the Parameters of ``root`` that the block drops (only when it succeeds)."""
    before = dict(root.named_parameters())
    yield
    kept = {id(p) for p in root.parameters()}
    for name, p in before.items():
        if id(p) not in kept:
            _DROPPED[id(p)] = (weakref.ref(p, _forget(id(p))), f"{name} ({what})")
    if _DROPPED and not _HOOK:
        _HOOK.append(register_optimizer_step_pre_hook(_warn))


def _forget(key: int) -> Any:
    def callback(_: weakref.ref[Tensor]) -> None:
        _DROPPED.pop(key, None)

    return callback


def _warn(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _DROPPED or optimizer in _WARNED:
        return
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            found = _DROPPED.get(id(p))
            if found is not None and found[0]() is p:
                names.append(found[1])
    if names:
        _WARNED.add(optimizer)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.warn(
            f"{type(optimizer).__name__}.step(): {len(names)} of its Parameters are no longer "
            f"part of the model, replaced by ws.load or ws.compress: {shown}; this step does "
            "not train them. Build the optimizer after ws.load / ws.compress.",
            UserWarning,
            stacklevel=3,
        )
