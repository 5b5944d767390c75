"""Typed access to a module's parametrizations (``torch.nn.utils.parametrize``)."""

from __future__ import annotations

from typing import cast

from torch import nn
from torch.nn.utils import parametrize


def parametrization_list(module: nn.Module, name: str) -> parametrize.ParametrizationList | None:
    """The parametrizations of ``module.<name>``, or None if it is not parametrized."""
    if not parametrize.is_parametrized(module, name):
        return None
    found = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, found[name])


def parametrized_names(module: nn.Module) -> list[str]:
    """The names of ``module``'s parametrized tensors (empty if none)."""
    if not parametrize.is_parametrized(module):
        return []
    return list(cast(nn.ModuleDict, module.parametrizations).keys())
