"""One structure for a tensor that several modules share (a tied embedding, a module used twice).

``torch.nn.utils.parametrize`` keeps a tensor's structure per module: a ``ParametrizationList``
under ``module.parametrizations.<name>``. When one ``Parameter`` is held by several modules, each
of them gets the **same** ``ParametrizationList`` object, so every module computes its weight
from the one stored tensor (and its gradient sums over the uses), as a shared plain
``Parameter`` does. These helpers move a module's attribute between plain and shared-structured
without computing anything.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["share", "unshare"]


def _containers(owner: nn.Module) -> nn.ModuleDict:
    found = owner.parametrizations
    assert isinstance(found, nn.ModuleDict)
    return found


class _Placeholder(nn.Module):
    """An identity parametrization, registered only to be replaced at once."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def share(owner: nn.Module, attr: str, plist: parametrize.ParametrizationList) -> None:
    """Make ``owner.<attr>`` computed by ``plist`` (a structure registered on another module)."""
    if not parametrize.is_parametrized(owner, attr):
        parametrize.register_parametrization(owner, attr, _Placeholder(), unsafe=True)
    _containers(owner)[attr] = plist


def unshare(owner: nn.Module, attr: str, tensor: Tensor) -> None:
    """Make ``owner.<attr>`` the plain ``tensor`` (a Parameter or a buffer), dropping any
    structure it sees without computing it."""
    if parametrize.is_parametrized(owner, attr):
        placeholder = parametrize.ParametrizationList([_Placeholder()], tensor, unsafe=True)
        _containers(owner)[attr] = placeholder
        parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
    elif isinstance(tensor, nn.Parameter):
        owner.register_parameter(attr, tensor)
    else:
        owner.register_buffer(attr, tensor)
