"""The logical tensors of a model and the structure each one has (spec page *Storage*, STORE-3).

A *logical tensor* is a tensor as the model sees it: ``0.weight`` of a tied ``nn.Linear`` is one
logical tensor (its values and labels are its parts), a plain bias is another. :func:`entries`
lists them with their structure, which :mod:`._serialize` turns into file records,
:mod:`._storage` into a table and :mod:`._compress` into compressed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._factorization import Factorization
from ._hash_recipe import HashTables
from ._hashed_layers import Hashed, _HashedWeight
from ._memory_format import memory_format_of
from ._packing import bit_width, pack_bits
from ._parametrized import original, parametrizations_of
from ._sharing import share, unshare
from ._sparse import Sparse
from ._symmetry import Symmetry
from ._tie import Tied
from ._transaction import protect

#: Every structure a logical tensor can have, as named in the file.
KINDS = ("dense", "tied", "hashed", "symmetric", "factorized", "sparse")
_PARAMETRIZATIONS: dict[type, str] = {
    Tied: "tied",
    Hashed: "hashed",
    Symmetry: "symmetric",
    Factorization: "factorized",
    Sparse: "sparse",
}


@dataclass
class Entry:
    """One logical tensor: where it lives and its structure.

    ``owner`` is the module holding it, ``attr`` its attribute name; ``kind`` one of ``KINDS``,
    or ``None`` for a structure that cannot be stored (``problem`` says why); ``structure`` is the
    parametrization (or the hashed layer) that computes it, ``None`` for a dense tensor.
    ``aliases`` are the other ``(name, owner, attr)`` that see the same tensor (one ``Parameter``,
    buffer, structure or hashed layer held by several modules, or a module used twice).
    """

    name: str
    owner: nn.Module
    attr: str
    kind: str | None
    structure: nn.Module | None = None
    problem: str = ""
    aliases: list[tuple[str, nn.Module, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Its name and its aliases' names."""
        return [self.name, *(a[0] for a in self.aliases)]

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical tensor's shape (read from its structure: nothing is materialized)."""
        s = self.structure
        if isinstance(s, HashTables):
            return tuple(s.table_shape)
        if isinstance(s, Tied):
            return tuple(s.labels.shape)
        if isinstance(s, Symmetry | Sparse):
            return tuple(s.shape)
        if isinstance(s, Factorization):
            return tuple(original(self.owner, self.attr, 0).shape)
        return tuple(getattr(self.owner, self.attr).shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def parts(self) -> dict[str, Tensor]:
        """The tensors that hold it in memory (parameters and all buffers, by role)."""
        s = self.structure
        if self.kind == "dense":
            return {"": getattr(self.owner, self.attr)}
        if isinstance(s, _HashedWeight):
            out = {"values": s.values, "index": s.index}
            out.update({} if s.sign is None else {"sign": s.sign})
            return {**out, "bucket_layout": s.bucket_layout}
        plist = parametrizations_of(self.owner, self.attr)
        out = {name: t for name, t in plist.named_parameters(recurse=False)}
        assert s is not None
        out.update({f"buffer.{n}": b for n, b in s.named_buffers() if b is not None})
        return out

    def dtype(self) -> torch.dtype:
        s = self.structure
        if isinstance(s, _HashedWeight):
            return s.values.dtype
        if self.kind == "dense":
            dense: Tensor = getattr(self.owner, self.attr)
            return dense.dtype
        dtype: torch.dtype = next(
            iter(parametrizations_of(self.owner, self.attr).parameters())
        ).dtype
        return dtype

    def record(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(meta, tensors)``: the JSON description and the tensors a file stores (STORE-3)."""
        if self.kind is None:
            raise ValueError(f"ws.save: {self.name!r} {self.problem}")
        meta: dict[str, Any] = {
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": str(self.dtype()).removeprefix("torch."),
        }
        s = self.structure
        if self.kind == "dense":
            return meta, {"": getattr(self.owner, self.attr).detach()}
        if isinstance(s, HashTables):
            values = s.values if isinstance(s, _HashedWeight) else self._original()
            meta.update(s.recipe())
            tensors = {"values": values.detach()}
            if s.hash_is_callable:
                tensors["index"] = s.packed_index()
            return meta, tensors
        if isinstance(s, Tied):
            meta.update(num_values=s.num_values, bits=bit_width(s.num_values))
            labels = pack_bits(s.labels, bit_width(s.num_values))
            return meta, {"values": self._original().detach(), "labels": labels}
        if isinstance(s, Symmetry):
            meta.update(symmetry=s.kind, kind_kwargs=dict(s.kind_kwargs), num_free=s.num_free)
            return meta, {"free": self._original().detach()}
        if isinstance(s, Factorization):
            meta.update(depth=s.depth)
            return meta, {
                f"factor{d}": original(self.owner, self.attr, d).detach() for d in range(s.depth)
            }
        assert isinstance(s, Sparse)
        layout = s.layout()
        meta.update({k: v for k, v in layout.items() if not isinstance(v, Tensor)})
        tensors = {k: v for k, v in layout.items() if isinstance(v, Tensor)}
        return meta, {"values": self._original().detach(), **tensors}

    def _original(self) -> Tensor:
        return original(self.owner, self.attr)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_foreign_extra_state(m: nn.Module) -> bool:
    overridden = type(m).get_extra_state is not nn.Module.get_extra_state
    return overridden and not isinstance(m, HashTables | Sparse)


def entries(module: nn.Module) -> list[Entry]:
    """Every logical tensor of ``module`` (parameters, persistent buffers, structured weights).

    The parametrization internals (``parametrizations.<name>.original``, tied labels, …) are
    parts of their logical tensor, not entries of their own.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    hidden: set[int] = set()
    for m in module.modules():
        if isinstance(m, parametrize.ParametrizationList):
            hidden.update(id(sub) for sub in m.modules())
    found: dict[tuple[str, int], Entry] = {}

    def add(key: tuple[str, int], e: Entry) -> None:
        if key in found:
            found[key].aliases.append((e.name, e.owner, e.attr))
        else:
            found[key] = e

    for path, m in module.named_modules(remove_duplicate=False):
        if id(m) in hidden:
            continue
        if isinstance(m, _HashedWeight):
            add(("hashed", id(m)), Entry(_join(path, "weight"), m, "weight", "hashed", m))
        elif _has_foreign_extra_state(m):
            problem = f"({type(m).__name__}) has extra state, which ws.save cannot store"
            e = Entry(_join(path, "_extra_state"), m, "_extra_state", None, m, problem)
            add(("extra", id(m)), e)
        if parametrize.is_parametrized(m):
            for attr, plist in m.parametrizations.items():
                add(("structure", id(plist)), _parametrized(_join(path, attr), m, attr, plist))
        for attr, p in m._parameters.items():
            if p is not None and not (isinstance(m, _HashedWeight) and attr == "values"):
                add(("tensor", id(p)), Entry(_join(path, attr), m, attr, "dense"))
        for attr, b in m._buffers.items():
            if b is not None and attr not in m._non_persistent_buffers_set:
                add(("tensor", id(b)), Entry(_join(path, attr), m, attr, "dense"))
    return list(found.values())


def _parametrized(
    name: str, owner: nn.Module, attr: str, plist: parametrize.ParametrizationList
) -> Entry:
    kinds = [_PARAMETRIZATIONS.get(type(p)) for p in plist]
    if len(kinds) == 1 and kinds[0] is not None:
        return Entry(name, owner, attr, kinds[0], plist[0])
    chain = " -> ".join(type(p).__name__ for p in plist)
    problem = (
        f"is parametrized by {chain}; ws.save stores one of tie, hashed, symmetric, factorize or "
        "a compressed form per tensor"
    )
    return Entry(name, owner, attr, None, None, problem)


Step = Callable[[], None]


def copy_into(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)`` without autograd (a running transaction keeps ``dst``'s values)."""
    protect(dst)
    with torch.no_grad():
        dst.copy_(src)


def current_memory_format(e: Entry) -> torch.memory_format:
    """The memory format ``e``'s weight has now (its structure's, for a structured one)."""
    if e.kind == "dense":
        return memory_format_of(getattr(e.owner, e.attr))
    fmt = getattr(e.structure, "memory_format", torch.contiguous_format)
    return fmt if isinstance(fmt, torch.memory_format) else torch.contiguous_format


def restructure(e: Entry, structure: nn.Module, unsafe: bool, values: list[Tensor]) -> Step:
    """A step: drop ``e``'s current structure, register ``structure``, load ``values`` into it;
    ``e``'s aliases then see the new structure too."""

    def step() -> None:
        if parametrize.is_parametrized(e.owner, e.attr):
            parametrize.remove_parametrizations(e.owner, e.attr, leave_parametrized=True)
        weight = getattr(e.owner, e.attr)
        with torch.no_grad():  # right_inverse of zeros cannot fail; the old storage is kept
            weight.data = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        parametrize.register_parametrization(e.owner, e.attr, structure, unsafe=unsafe)
        plist = parametrizations_of(e.owner, e.attr)
        single = hasattr(plist, "original")  # else a tuple-valued right_inverse: original0..
        originals = (
            [original(e.owner, e.attr)]
            if single
            else [original(e.owner, e.attr, d) for d in range(len(values))]
        )
        for dst, src in zip(originals, values, strict=True):
            copy_into(dst, src)
        for _, owner, attr in e.aliases:
            share(owner, attr, plist)

    return step


def make_plain(e: Entry, tensor: Tensor) -> None:
    """Make ``e`` and its aliases the plain ``tensor``, dropping their structure uncomputed."""
    for _, owner, attr in [(e.name, e.owner, e.attr), *e.aliases]:
        unshare(owner, attr, tensor)
