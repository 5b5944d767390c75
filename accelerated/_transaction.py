"""All or nothing: undo every change a failed ``load``, ``compress`` or ``tie`` made to a model.

:func:`transaction` records, before anything changes, every module under a root (the
parametrization containers included): the objects in its ``__dict__`` (its parameter, buffer and
submodule dicts keep their identity, their contents are restored), its class (``parametrize``
swaps in a subclass with one property per parametrized tensor; those properties are restored too)
and, for every parameter and buffer, its storage and shape (``parametrize`` re-points a
``Parameter`` with ``set_``). An in-place write into a recorded tensor goes through
:func:`protect`, which keeps a copy of its values first. On an exception everything is put back,
so the model has the same structure, the same ``Parameter`` objects and the same values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["Transaction", "protect", "transaction"]

_CURRENT: list[Transaction] = []


class Transaction:
    """The recorded state of the modules under ``root`` (see the module docstring)."""

    def __init__(self, root: nn.Module) -> None:
        self._modules: list[tuple[nn.Module, type, dict[str, Any], dict[int, Any]]] = []
        self._classes: list[tuple[type, dict[str, Any]]] = []
        self._tensors: dict[int, tuple[Tensor, Tensor]] = {}
        self._values: dict[int, Tensor] = {}
        seen_classes: set[int] = set()
        for m in root.modules():
            attrs = dict(m.__dict__)
            contents = {id(v): _contents(v) for v in attrs.values() if isinstance(v, dict | set)}
            self._modules.append((m, m.__class__, attrs, contents))
            cls = m.__class__
            if parametrize.is_parametrized(m) and id(cls) not in seen_classes:
                seen_classes.add(id(cls))
                self._classes.append((cls, dict(vars(cls))))
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is not None and id(t) not in self._tensors:
                    self._tensors[id(t)] = (t, t.data)

    def protect(self, t: Tensor) -> None:
        """Keep a copy of ``t``'s values if it is a recorded tensor still on its first storage."""
        found = self._tensors.get(id(t))
        if found is None or id(t) in self._values:
            return
        alias = found[1]
        if t.untyped_storage().data_ptr() == alias.untyped_storage().data_ptr():
            self._values[id(t)] = alias.detach().clone()

    def rollback(self) -> None:
        """Put every recorded module and tensor back as it was."""
        with torch.no_grad():
            for key, (t, alias) in self._tensors.items():
                t.data = alias
                if key in self._values:
                    alias.copy_(self._values[key])
        for cls, attrs in self._classes:
            for name in [k for k in vars(cls) if k not in attrs]:
                delattr(cls, name)
            for name, value in attrs.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)
        for m, cls, attrs, contents in self._modules:
            m.__class__ = cls
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for v in attrs.values():
                if id(v) in contents:
                    _restore(v, contents[id(v)])


def _contents(v: dict[Any, Any] | set[Any]) -> Any:
    return dict(v) if isinstance(v, dict) else set(v)


def _restore(v: dict[Any, Any] | set[Any], contents: Any) -> None:
    v.clear()
    v.update(contents)


@contextmanager
def transaction(root: nn.Module) -> Iterator[Transaction]:
    """Run the block on ``root``; if it raises, undo its changes to ``root`` and re-raise."""
    tx = Transaction(root)
    _CURRENT.append(tx)
    try:
        yield tx
    except BaseException:
        tx.rollback()
        raise
    finally:
        _CURRENT.remove(tx)


def protect(t: Tensor) -> None:
    """Called before an in-place write into ``t``: the running transactions keep its values."""
    for tx in _CURRENT:
        tx.protect(t)
