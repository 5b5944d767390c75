"""Hard weight tying to a discovered sharing pattern (retrain mode), and sharing metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks as checks
from ._checks import is_dtensor
from ._memory_format import in_format, memory_format_of
from ._packing import bit_width, index_dtype, pack_bits, unpack_bits
from ._parametrized import parametrization_list, parametrized_names
from ._prox import clusters
from ._sharing import share, unshare
from ._transaction import transaction

__all__ = ["num_distinct", "tie", "untie", "zero_fraction"]


class Tied(nn.Module):
    r"""Parametrization ``w_i = v[c(i)]``: one stored value per cluster, gathered to the weight.

    In memory the labels are int32 (int64 only when ``K > 2**31``), the narrowest dtype torch's
    gather takes; in the state dict they are bit-packed at ``ceil(log2 K)`` bits (spec STORE-2).

    Args:
        labels: integer cluster index of every weight entry, with values ``0 .. K-1``.
        num_values: the number of clusters ``K``.
    """

    labels: Tensor

    def __init__(self, labels: Tensor, num_values: int) -> None:
        super().__init__()
        self.register_buffer("labels", labels.to(index_dtype(num_values)))
        self.num_values = num_values

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "labels"] = pack_bits(self.labels, bit_width(self.num_values))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        *args: list[str],
    ) -> None:
        key = prefix + "labels"
        if key in state_dict:
            try:
                labels = self.unpack(state_dict[key])
            except (TypeError, ValueError) as err:
                args[2].append(f"{key}: {err}")  # error_msgs
                return
            state_dict = {**state_dict, key: labels}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

    def unpack(self, packed: Tensor) -> Tensor:
        """The labels of this weight's shape from their packed form, checked to be ``< K``."""
        k, shape = self.num_values, self.labels.shape
        flat = unpack_bits(packed, bit_width(k), self.labels.numel(), dtype=index_dtype(k))
        bad = int((flat >= k).sum())
        if bad:
            raise ValueError(f"the packed labels have {bad} entries outside [0, {k})")
        return flat.reshape(shape)

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of the built weight: the labels' (indexing keeps it)."""
        return memory_format_of(self.labels)

    def forward(self, values: Tensor) -> Tensor:
        # indexing backward accumulates: the gradient of values[k] is the sum over its members
        return values[self.labels]

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The cluster means of ``weight``: the least-squares tied weight."""
        # shifted mean: each cluster's first member plus the mean deviation from it, so a cluster
        # of equal values keeps its value exactly
        flat, w = self.labels.reshape(-1).long(), weight.reshape(-1)
        order = torch.arange(flat.numel(), device=flat.device)
        first = torch.full((self.num_values,), flat.numel(), device=flat.device)
        first = first.scatter_reduce(0, flat, order, "amin")
        anchor = w[first]
        dev = weight.new_zeros(self.num_values).index_add_(0, flat, w - anchor[flat])
        counts = torch.bincount(flat, minlength=self.num_values).to(weight.dtype)
        return anchor + dev / counts

    def extra_repr(self) -> str:
        return f"num_values={self.num_values}, shape={tuple(self.labels.shape)}"


def tie(module: nn.Module, name: str = "weight", labels: Tensor | None = None) -> nn.Module:
    """Tie the entries of ``module.<name>`` that share a label to one trainable value.

    Registers a parametrization that stores one value per cluster (initialised to the cluster
    mean) and gathers them into the weight, so the gradient of a shared value is the sum of its
    members' gradients. The stored ``Parameter`` keeps its identity and becomes shape ``(K,)``:
    build the optimizer after tying. ``name`` may be a dotted path (``"emb.weight"``): every
    module under ``module`` that holds the same ``Parameter`` (tied embeddings, a module used
    twice) then sees the one tied structure. Either the tie is made, or nothing is changed.

    Args:
        module: the module that owns the parameter, or one of its parents.
        name: the parameter's attribute name, or its dotted path under ``module``.
        labels: integer tensor of the parameter's shape; equal labels share one value. Defaults to
            ``weightshare.clusters(weight)``, the groups of exactly equal values.

    Returns:
        The module, now parametrized.

    Raises:
        ValueError: ``name`` is not a plain parameter of ``module``, is already parametrized,
            holds NaN/inf, or ``labels`` has another shape.
        TypeError: the parameter is not floating point or ``labels`` is not an integer tensor.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"tie expects an nn.Module, got {type(module).__name__}")
    owner, attr = _resolve(module, name)
    if parametrize.is_parametrized(owner, attr):
        raise ValueError(f"{name!r} of {type(module).__name__} is already parametrized")
    weight = owner._parameters.get(attr)
    if weight is None:
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    if is_dtensor(weight):
        raise NotImplementedError(
            f"tie of a DTensor parameter ({name!r} of {type(module).__name__}, sharded by "
            "fully_shard or tensor parallelism) is not supported: tie before sharding the module"
        )
    checks.check_float(weight, f"parameter {name!r}")
    checks.check_finite(weight, f"parameter {name!r} of shape {tuple(weight.shape)}")
    if labels is None:
        labels = clusters(weight.detach()).reshape(weight.shape)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != weight.shape:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match {name!r} of shape "
            f"{tuple(weight.shape)}"
        )
    uniq, index = torch.unique(labels.to(weight.device), return_inverse=True)
    index = in_format(index.reshape(weight.shape), memory_format_of(weight))
    tied = Tied(index, int(uniq.numel()))
    others = [(m, a) for m, a in _holders(module, weight) if (m, a) != (owner, attr)]
    with transaction(module):
        parametrize.register_parametrization(owner, attr, tied, unsafe=True)
        plist = parametrization_list(owner, attr)
        assert plist is not None
        for m, a in others:
            share(m, a, plist)
    return module


def untie(module: nn.Module, name: str = "weight") -> nn.Module:
    """Remove the tying of ``module.<name>``, keeping the tied weight as a plain parameter.

    ``name`` may be a dotted path; every module under ``module`` that sees the same tie gets the
    plain ``Parameter`` back.

    Args:
        module: the module that owns the tied parameter, or one of its parents.
        name: the parameter's attribute name, or its dotted path under ``module``.

    Returns:
        The module, with ``module.<name>`` a plain parameter of the original shape (the same
        ``Parameter`` object).

    Raises:
        ValueError: ``module.<name>`` is not tied by `tie`.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"untie expects an nn.Module, got {type(module).__name__}")
    owner, attr = _resolve(module, name)
    plist = parametrization_list(owner, attr)
    if plist is None or not any(isinstance(p, Tied) for p in plist):
        raise ValueError(f"{name!r} of {type(module).__name__} is not tied")
    if is_dtensor(plist.original):
        raise NotImplementedError(
            f"untie of a sharded tie ({name!r} of {type(module).__name__}, a DTensor after "
            "fully_shard or tensor parallelism) is not supported: untie before sharding"
        )
    others = [
        (m, a)
        for m in module.modules()
        for a in _parametrized_as(m, plist)
        if (m, a) != (owner, attr)
    ]
    with transaction(module):
        parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
        weight = owner._parameters[attr]
        assert weight is not None
        for m, a in others:
            unshare(m, a, weight)
    return module


def _resolve(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module and attribute a (dotted) tensor name refers to."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    path, _, attr = name.rpartition(".")
    try:
        return (module.get_submodule(path) if path else module), attr
    except AttributeError:
        raise ValueError(f"{type(module).__name__} has no submodule {path!r}") from None


def _holders(module: nn.Module, p: Tensor) -> list[tuple[nn.Module, str]]:
    """Every ``(module, attr)`` under ``module`` whose plain parameter ``attr`` is ``p``."""
    return [(m, a) for m in module.modules() for a, q in m._parameters.items() if q is p]


def _parametrized_as(m: nn.Module, plist: nn.Module) -> list[str]:
    return [a for a in parametrized_names(m) if parametrization_list(m, a) is plist]


def _whole(w: Tensor) -> Tensor:
    """A DTensor's full value on every rank (an all-gather where it is sharded)."""
    return w.full_tensor() if is_dtensor(w) else w


def num_distinct(w: Tensor) -> int:
    """The number of distinct values among the entries of ``w`` (``-0.0 == 0.0``).

    Args:
        w: a real floating tensor of any shape.

    Returns:
        The count; 0 for an empty tensor.

    Raises:
        TypeError: ``w`` is not a real floating tensor.
        ValueError: ``w`` holds NaN or inf.
    """
    checks.check_float(w, "w")
    w = _whole(w.detach())
    checks.check_finite(w, "w")
    return int(torch.unique(w).numel())


def zero_fraction(w: Tensor, atol: float = 0.0) -> float:
    """The fraction of entries of ``w`` with ``|w_i| <= atol``.

    Args:
        w: a non-empty real floating tensor of any shape.
        atol: the tolerance, ``>= 0``.

    Returns:
        A float in ``[0, 1]``.

    Raises:
        TypeError: ``w`` is not a real floating tensor.
        ValueError: ``w`` is empty or holds NaN/inf, or ``atol`` is negative or NaN.
    """
    checks.check_float(w, "w")
    w = _whole(w.detach())
    atol = checks.check_real(atol, "atol")
    if not atol >= 0.0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    if w.numel() == 0:
        raise ValueError("zero_fraction of an empty tensor is undefined")
    checks.check_finite(w, "w")
    return int((w.abs() <= atol).sum()) / w.numel()
