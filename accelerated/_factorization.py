r"""Deep weight factorization (DWF) in torch: ``w = u_1 ⊙ … ⊙ u_D`` as a parametrization.

``factorize`` registers :class:`Factorization` (its ``right_inverse`` returns the D factors, stored
as ``parametrizations.<name>.original0..D-1``) and initializes the factors; L2 on the factors is
plain SGD ``weight_decay`` (see ``weight_decay_for``). ``collapse`` multiplies the factors back,
thresholds and removes the parametrization.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _checks as checks
from ._parametrized import parametrization_list, parametrized_names
from .reference._args import check_depth, check_init, check_nonneg_finite

# The public names are listed once, in ``weightshare.factorization`` (``__all__``), which
# re-exports them from here.

INITS = ("variance-matching", "variance-matching-untruncated", "balanced")
# layers whose reset_parameters() draws weight ~ U(±1/sqrt(fan_in)) (kaiming_uniform_, a=sqrt(5))
_KAIMING_UNIFORM = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


def _check_factors(factors: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(factors, Tensor) or not isinstance(factors, Sequence):
        raise TypeError("factors must be a sequence of tensors")
    if not factors:
        raise ValueError("factors must hold at least one tensor")
    tensors = [checks.check_float_values(u, f"factors[{d}]") for d, u in enumerate(factors)]
    shapes = {tuple(u.shape) for u in tensors}
    if len(shapes) > 1:
        raise ValueError(f"factors must share one shape, got shapes {sorted(shapes)}")
    return tensors


def product(factors: Sequence[Tensor]) -> Tensor:
    r"""The elementwise product $u_1 \odot \dots \odot u_D$ (differentiable).

    Same as the reference ``product``; the reference ``collapse(factors, threshold=t)`` is
    ``product`` followed by thresholding.

    Args:
        factors: $D \ge 1$ tensors of one shape.

    Returns:
        The collapsed weight.
    """
    tensors = _check_factors(factors)
    out = tensors[0]
    for u in tensors[1:]:
        out = out * u
    return out


def equivalent_penalty(w: Tensor, mu: float, depth: int) -> Tensor:
    r"""$D\mu\sum_j |w_j|^{2/D}$, the penalty induced on $w$ by $\mu\sum_d\lVert u_d\rVert^2$.

    Args:
        w: The collapsed weight.
        mu: The factor L2 coefficient $\mu \ge 0$.
        depth: $D \ge 1$.

    Returns:
        A 0-d tensor (differentiable where $w \ne 0$).
    """
    w = checks.check_float_values(w, "w")
    mu, depth = check_nonneg_finite(mu, "mu"), check_depth(depth)
    return depth * mu * w.abs().pow(2.0 / depth).sum()


def factor_penalty(factors: Sequence[Tensor], mu: float) -> Tensor:
    r"""$\mu\sum_d\lVert u_d\rVert_2^2$.

    Args:
        factors: $D \ge 1$ tensors of one shape.
        mu: The coefficient $\mu \ge 0$.

    Returns:
        A 0-d tensor.
    """
    tensors = _check_factors(factors)
    mu = check_nonneg_finite(mu, "mu")
    squares = [u.square().sum() for u in tensors]
    total = squares[0]
    for square in squares[1:]:
        total = total + square
    return mu * total


def weight_decay_for(lam: float, depth: int) -> float:
    r"""SGD ``weight_decay`` per factor for the penalty $(\lambda/D)\sum_d\lVert u_d\rVert^2$.

    Args:
        lam: The paper's $\lambda \ge 0$ (induced penalty $\lambda\sum_j|w_j|^{2/D}$).
        depth: $D \ge 1$.

    Returns:
        $2\lambda/D$.
    """
    return 2.0 * check_nonneg_finite(lam, "lam") / check_depth(depth)


def init(
    shape: Sequence[int],
    depth: int,
    generator: torch.Generator | None = None,
    *,
    std: float,
    eps: float | None = None,
    truncate: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> list[Tensor]:
    r"""Variance-matching factors with absolute-value truncation (our reading of Algorithm 1).

    Entries are i.i.d. $\mathcal N(0, \sigma_w^{2/D})$; with ``truncate`` each is redrawn until
    $\varepsilon^{1/D} < |u| < \min(1, (2\sigma_w)^{1/D})$.

    Args:
        shape: The weight shape.
        depth: $D \ge 1$.
        generator: The torch generator (on ``device``); ``None`` uses the global one.
        std: $\sigma_w > 0$, the std of the layer's ordinary init.
        eps: $\varepsilon$, the smallest collapsed magnitude; ``None`` means $\sigma_w/4$.
        truncate: Whether to apply the truncation.
        device: Device of the factors.
        dtype: dtype of the factors (default: torch's default dtype).

    Returns:
        ``depth`` tensors of ``shape``.
    """
    depth, std, lo, hi = check_init(depth, std, eps, truncate)
    scale = std ** (1.0 / depth)
    shape = tuple(int(s) for s in shape)
    out = []
    for _ in range(depth):
        u = torch.randn(shape, generator=generator, device=device, dtype=dtype) * scale
        if truncate:
            bad = ~((u.abs() > lo) & (u.abs() < hi))
            while bool(bad.any()):
                redraw = torch.randn(
                    int(bad.sum()), generator=generator, device=device, dtype=dtype
                )
                u[bad] = redraw * scale
                bad = ~((u.abs() > lo) & (u.abs() < hi))
        out.append(u)
    return out


_draw_factors = init  # ``factorize`` has an argument named ``init``


class Factorization(nn.Module):
    r"""Parametrization $(u_1, \dots, u_D) \mapsto u_1 \odot \dots \odot u_D$.

    ``right_inverse(w)`` returns the balanced split $u_1 = \operatorname{sign}(w)|w|^{1/D}$,
    $u_{d>1} = |w|^{1/D}$, whose product is $w$.

    Args:
        depth: $D \ge 1$.
    """

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = check_depth(depth)

    def forward(self, *factors: Tensor) -> Tensor:
        out = factors[0]
        for u in factors[1:]:
            out = out * u
        return out

    def right_inverse(self, w: Tensor) -> tuple[Tensor, ...]:
        root = w.abs().pow(1.0 / self.depth)
        return (torch.sign(w) * root, *(root.clone() for _ in range(self.depth - 1)))

    def extra_repr(self) -> str:
        return f"depth={self.depth}"


def default_std(module: nn.Module, name: str = "weight") -> float:
    r"""$\sigma_w$: the std of the module's ordinary init of ``module.<name>``.

    For ``nn.Linear``, ``nn.Bilinear`` and conv layers (weight or bias), whose
    ``reset_parameters`` draws $U(\pm 1/\sqrt{\text{fan\_in}})$, this is
    $1/\sqrt{3\,\text{fan\_in}}$ with fan_in from the weight's shape. Otherwise it is the
    empirical std of the current tensor.

    Args:
        module: The module owning the tensor.
        name: The tensor's attribute name.

    Returns:
        $\sigma_w > 0$.
    """
    if isinstance(module, _KAIMING_UNIFORM) and name in ("weight", "bias"):
        shape = module.weight.shape
        fan_in = shape[1] * math.prod(shape[2:])
        return 1.0 / math.sqrt(3.0 * fan_in)
    t = getattr(module, name)
    std = float(t.detach().std()) if t.numel() > 1 else 0.0
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"cannot infer std from {name!r} of shape {tuple(t.shape)}; pass std=")
    return std


def _get_tensor(module: nn.Module, name: str) -> Tensor:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    t = getattr(module, name, None)
    if not isinstance(t, Tensor):
        raise ValueError(f"module has no tensor named {name!r}")
    return t


def factorize(
    module: nn.Module,
    name: str = "weight",
    *,
    depth: int = 2,
    init: str = "variance-matching",
    std: float | None = None,
    eps: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    r"""Replace ``module.<name>`` by the product of ``depth`` factors of its shape.

    Args:
        module: The module owning the tensor.
        name: The tensor's attribute name.
        depth: $D \ge 1$.
        init: ``"variance-matching"`` (truncated, the default), ``"variance-matching-untruncated"``
            or ``"balanced"`` (the exact balanced split of the current weight).
        std: $\sigma_w$ for the variance-matching inits; ``None`` uses ``default_std``.
        eps: The truncation's smallest collapsed magnitude; ``None`` means $\sigma_w/4$.
        generator: Random generator for the init (on the tensor's device).

    Returns:
        The module, parametrized in place; factors at ``parametrizations.<name>.original0..D-1``.
    """
    w = _get_tensor(module, name)
    depth = check_depth(depth)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{name!r} is already parametrized; factorize needs a plain tensor")
    checks.check_float_values(w, name)
    sampled = None
    if init != "balanced":
        sigma = default_std(module, name) if std is None else check_nonneg_finite(std, "std")
        sampled = _draw_factors(
            w.shape,
            depth,
            generator,
            std=sigma,
            eps=eps,
            truncate=init == "variance-matching",
            device=w.device,
            dtype=w.dtype,
        )
    parametrize.register_parametrization(module, name, Factorization(depth))
    if sampled is not None:
        with torch.no_grad():
            for original, u in zip(factors(module, name), sampled, strict=True):
                original.copy_(u)
    return module


def _factorization(module: nn.Module, name: str) -> Factorization:
    plist = parametrization_list(module, name)
    if plist is None or len(plist) != 1 or not isinstance(plist[0], Factorization):
        raise ValueError(f"{name!r} of {type(module).__name__} is not factorized by factorize()")
    return plist[0]


def factors(module: nn.Module, name: str = "weight") -> tuple[Tensor, ...]:
    r"""The factor parameters $(u_1, \dots, u_D)$ of a factorized ``module.<name>``.

    Args:
        module: A module prepared by ``factorize``.
        name: The tensor's attribute name.

    Returns:
        The ``original0..D-1`` parameters, in order.
    """
    depth = _factorization(module, name).depth
    plist = parametrization_list(module, name)
    return tuple(getattr(plist, f"original{d}") for d in range(depth))


def collapse(module: nn.Module, name: str = "weight", *, threshold: float) -> nn.Module:
    r"""Multiply the factors back into a plain weight, zero $|w| < \text{threshold}$, unfactorize.

    Unlike the reference ``collapse(factors, threshold=...)``, which takes the factor arrays and
    returns an array, this takes the *module*: it returns the same module with the
    parametrization removed (its class restored) and ``module.<name>`` a plain parameter equal to
    the reference ``collapse`` of its factors.

    Args:
        module: A module prepared by ``factorize``.
        name: The tensor's attribute name.
        threshold: Magnitudes strictly below it become exactly 0 (0 keeps everything).

    Returns:
        The module.
    """
    _get_tensor(module, name)
    _factorization(module, name)
    threshold = check_nonneg_finite(threshold, "threshold")
    with torch.no_grad():
        w = product(factors(module, name))
        w = torch.where(w.abs() < threshold, torch.zeros_like(w), w)
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    with torch.no_grad():
        getattr(module, name).copy_(w)
    return module


def _logical_tensors(module: nn.Module) -> list[Tensor]:
    """Every parameter as the model sees it: parametrized tensors by value, factors excluded."""
    hidden = {
        id(sub)
        for m in module.modules()
        if isinstance(m, parametrize.ParametrizationList)
        for sub in m.modules()
    }
    out: list[Tensor] = []
    for m in module.modules():
        if id(m) in hidden:
            continue
        out += [p for p in m._parameters.values() if p is not None]
        out += [getattr(m, n) for n in parametrized_names(m)]
    return out


def compression_ratio(module: nn.Module | Tensor | Sequence[Tensor]) -> float:
    r"""$\#\text{entries} / \#\text{non-zero entries}$ (inf if all are zero).

    For a module the entries are all its parameters as the model sees them: a parametrized
    tensor (e.g. a factorized weight) counts by its value, not by its factors; biases count.

    Args:
        module: A module, a tensor, or a sequence of tensors (pooled).

    Returns:
        The ratio.
    """
    if isinstance(module, nn.Module):
        tensors = _logical_tensors(module)
    elif isinstance(module, Tensor):
        tensors = [module]
    else:
        tensors = list(module)
    with torch.no_grad():
        total = sum(t.numel() for t in tensors)
        nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
    if total == 0:
        raise ValueError("compression_ratio of an empty weight")
    return math.inf if nonzero == 0 else total / nonzero
