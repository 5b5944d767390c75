"""Typed access to a module's parametrizations (``torch.nn.utils.parametrize``)."""

from __future__ import annotations

from typing import cast

import torch
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


def parametrizations_of(module: nn.Module, name: str) -> parametrize.ParametrizationList:
    """The parametrizations of ``module.<name>``, which must be parametrized."""
    found = parametrization_list(module, name)
    if found is None:
        raise ValueError(f"{name!r} of {type(module).__name__} is not parametrized")
    return found


def original(module: nn.Module, name: str, index: int | None = None) -> torch.Tensor:
    """The stored tensor behind ``module.<name>`` (``original``, or ``original<index>`` for a
    parametrization whose ``right_inverse`` returns several tensors)."""
    stored: torch.Tensor = getattr(
        parametrizations_of(module, name), "original" if index is None else f"original{index}"
    )
    return stored
