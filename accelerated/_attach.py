r"""Proximal WSR steps after every optimizer step, through ``Optimizer.register_step_post_hook``.

The configuration lives in the param groups (keys ``wsr_*``) so it survives
``optimizer.state_dict()``; the hook itself is not saved and is re-attached with
``attach(optimizer, None)``.
"""

from __future__ import annotations

import numbers
import warnings
import weakref
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import _checks as checks
from . import _distributed as distributed
from . import _methods as methods
from . import _prox as plain
from . import _step_graph as step_graph
from ._deferred import DeferredCheck

__all__ = ["Attachment", "attach"]

KEYS = ("wsr_lam", "wsr_l1", "wsr_dim", "wsr_method", "wsr_mask")

# optimizer -> its live attachment (at most one)
_LIVE: weakref.WeakKeyDictionary[Optimizer, Attachment] = weakref.WeakKeyDictionary()


class Attachment:
    """The handle returned by `attach`; ``remove()`` detaches the prox."""

    def __init__(self, optimizer: Optimizer, cuda_graph: bool | str = "auto") -> None:
        self._optimizer = weakref.ref(optimizer)
        self._hook = optimizer.register_step_post_hook(_step_hook)
        self._deferred = DeferredCheck()
        self._graph = step_graph.StepGraph(cuda_graph)
        #: the groups the attachment has seen (a later one without keys is warned about once)
        self._groups = len(optimizer.param_groups)
        # the mark that a copy (deepcopy, pickle) of the optimizer carries and a state dict does
        # not: the copy re-attaches itself at its first step (TRAIN-23)
        optimizer.defaults = _AttachedDefaults(optimizer.defaults)

    def check(self) -> None:
        """Wait for the pending NaN/inf checks of CUDA parameters and raise if one failed.

        On CUDA the step never reads a device value: a NaN/inf is reported by a later step once
        its count has reached the host, or here at the latest.
        """
        self._deferred.poll(wait=True)

    @property
    def eager_reason(self) -> str | None:
        """Why the last step ran eagerly rather than as a CUDA graph (None: it replayed one)."""
        return self._graph.reason

    def remove(self) -> None:
        """Unregister the hook, free the step's CUDA graph, delete the ``wsr_*`` keys."""
        self._hook.remove()
        self._graph.release()
        optimizer = self._optimizer()
        if optimizer is not None and _LIVE.get(optimizer) is self:
            del _LIVE[optimizer]
            _strip(optimizer)
            optimizer.defaults = dict(optimizer.defaults)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _AttachedDefaults(dict[str, Any]):
    """``optimizer.defaults`` of an attached optimizer: a plain dict that marks the attachment.

    ``Optimizer.__getstate__`` keeps ``defaults``, ``state`` and ``param_groups`` only, so a
    deepcopied or unpickled optimizer has the ``wsr_*`` keys but no hook; this mark (kept by the
    copy, never written to a state dict, invisible to ``add_param_group``) tells the global step
    hook to re-attach the copy.
    """


def _strip(optimizer: Optimizer) -> None:
    for group in optimizer.param_groups:
        for key in KEYS:
            group.pop(key, None)


def _strength(value: object, what: str) -> float:
    return checks.check_scalar_strength(value, what)


def _group_strength(value: object, count: int, what: str) -> None:
    """A group's stored strength: one number, or a list with one per parameter of the group."""
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(f"{what} has {len(value)} entries for {count} params")
        for j, v in enumerate(value):
            _strength(v, f"{what}[{j}]")
    else:
        _strength(value, what)


def _per_param(value: Any, j: int) -> float:
    return float(value[j] if isinstance(value, list | tuple) else value)


def _check_dim(p: Tensor, dim: object) -> int | None:
    return checks.normalize_dim(p, dim, "a parameter")


def _check_method(method: object, like: Tensor) -> None:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    methods.check_method(method)
    if checks.is_dtensor(like):  # the method runs on the local shards
        like = like.to_local()
    # a tiny prox on the device and dtype of an attached tensor raises on an unusable method
    plain.prox_many([like.new_zeros(2)], 1.0, None, method)


def _check_group(i: int, group: dict[str, Any]) -> list[Tensor]:
    """The static checks of a group's ``wsr_*`` settings (no value is read); its attached
    tensors. Run by ``attach(optimizer, None)`` and at every step (edited settings, TRAIN-22)."""
    missing = [k for k in KEYS if k not in group]
    if missing:
        raise ValueError(f"param group {i} lacks the keys {missing}")
    count, mask = len(group["params"]), group["wsr_mask"]
    if not isinstance(mask, list | tuple) or len(mask) != count:
        size = len(mask) if isinstance(mask, list | tuple) else type(mask).__name__
        raise ValueError(f"param group {i} wsr_mask has {size} entries for {count} params")
    _group_strength(group["wsr_lam"], count, f"param group {i} wsr_lam")
    _group_strength(group["wsr_l1"], count, f"param group {i} wsr_l1")
    method = group["wsr_method"]
    if not isinstance(method, str) or method not in methods.ALL_METHODS:
        raise ValueError(
            f"param group {i} wsr_method: unknown method {method!r}; valid methods: "
            f"{', '.join(methods.ALL_METHODS)}"
        )
    dim = group["wsr_dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
        raise TypeError(f"param group {i} wsr_dim must be an int or None, got {dim!r}")
    attached = [p for p, on in zip(group["params"], mask, strict=True) if on]
    for p in attached:
        checks.normalize_dim(p, dim, f"param group {i} (wsr_dim) a parameter")
    return attached


def _resume(optimizer: Optimizer) -> None:
    groups = [g for g in optimizer.param_groups if "wsr_lam" in g]
    if not groups:
        raise ValueError(
            "attach(optimizer, None) resumes from 'wsr_lam' keys, but no group has one"
        )
    for i, group in enumerate(optimizer.param_groups):
        if "wsr_lam" not in group:
            continue
        attached = _check_group(i, group)
        if attached:
            _check_method(group["wsr_method"], attached[0])


def _configure(
    optimizer: Optimizer,
    lam: float | dict[int, float],
    params: Iterable[Tensor] | Tensor | None,
    dim: object,
    l1: float,
    method: str,
) -> None:
    """Validate the whole configuration, then write it into the param groups."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if isinstance(lam, dict):
        chosen = set(lam)
    elif params is None:
        chosen = {id(p) for g in optimizer.param_groups for p in g["params"] if p.ndim >= 2}
        if not chosen:
            raise ValueError("the optimizer holds no parameter with ndim >= 2; pass params=")
    else:
        given = _tensors(params, "params")
        for p in given:
            if id(p) not in held:
                raise ValueError(
                    f"a parameter of shape {tuple(p.shape)} in params is not held by the optimizer"
                )
        chosen = {id(p) for p in given}
        if not chosen:
            raise ValueError("params is empty: nothing to attach")
    attached = [p for g in optimizer.param_groups for p in g["params"] if id(p) in chosen]
    for p in attached:
        _check_dim(p, dim)
    _check_method(method, attached[0])
    # validated: now write the whole configuration
    _strip(optimizer)
    for group in optimizer.param_groups:
        mask = [id(p) in chosen for p in group["params"]]
        if not any(mask):
            continue
        group_lam: float | list[float]
        if isinstance(lam, dict):
            group_lam = [lam.get(id(p), 0.0) for p in group["params"]]
            if len({v for v, on in zip(group_lam, mask, strict=True) if on}) == 1:
                group_lam = next(v for v, on in zip(group_lam, mask, strict=True) if on)
        else:
            group_lam = lam
        group.update(wsr_lam=group_lam, wsr_l1=l1, wsr_dim=dim, wsr_method=method, wsr_mask=mask)


def _tensors(params: Iterable[Tensor] | Tensor, what: str) -> list[Tensor]:
    out = [params] if isinstance(params, Tensor) else list(params)
    for p in out:
        if not isinstance(p, Tensor):
            raise TypeError(f"{what} must hold tensors, got {type(p).__name__}")
    return out


def _strengths_by_param(optimizer: Optimizer, lam: Mapping[Any, Any]) -> dict[int, float]:
    """``{id(param): λ}`` from a mapping of parameters to strengths (all held by ``optimizer``)."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    out: dict[int, float] = {}
    for p, value in lam.items():
        if not isinstance(p, Tensor):
            raise TypeError(f"the keys of lam must be parameters, got {type(p).__name__}")
        if id(p) not in held:
            raise ValueError(
                f"a parameter of shape {tuple(p.shape)} in lam is not held by the optimizer"
            )
        out[id(p)] = _strength(value, f"lam[parameter of shape {tuple(p.shape)}]")
    if not out:
        raise ValueError("lam is an empty mapping: nothing to attach")
    return out


def attach(
    optimizer: Optimizer,
    lam: float | Mapping[Tensor, float] | None,
    params: Iterable[Tensor] | None = None,
    *,
    dim: int | None = None,
    l1: float = 0.0,
    method: str = "auto",
    cuda_graph: bool | str = "auto",
) -> Attachment:
    r"""Apply the WSR prox (and optional l1 shrinkage) after every ``optimizer.step()``.

    After each step, every attached parameter ``p`` of a group with learning rate ``lr`` becomes
    ``soft_threshold(prox(p, lr * lam, dim), lr * l1)``, in place under ``torch.no_grad()``: the
    proximal gradient step for SGD, the decoupled step for adaptive optimizers. The learning rate
    is read at step time, so LR schedulers apply. ``lam``, ``l1``, ``dim``, ``method`` and which
    parameters are attached are stored in the param groups (keys ``wsr_lam``, ``wsr_l1``,
    ``wsr_dim``, ``wsr_method``, ``wsr_mask``), read at every step and saved by
    ``optimizer.state_dict()``. ``DTensor`` parameters (FSDP2, tensor parallelism) work too: see
    the Distributed training section of the training page for what the prox then communicates.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        lam: the WSR strength $\lambda \ge 0$ (a number); or a mapping from parameters to
            their strengths (which attaches exactly those parameters; ``params`` must then be
            None), e.g. ``{fc1.weight: 0.1, fc2.weight: 0.01}``; or ``None`` to resume from the
            ``wsr_*`` keys already in the param groups (after ``load_state_dict``).
        params: the tensors to regularize; all must be held by ``optimizer``. Defaults to every
            parameter of the optimizer with ``ndim >= 2``.
        dim: ``None`` for one vector per tensor, or the dimension along which each 1-D slice is
            its own vector.
        l1: the l1 strength $\mu \ge 0$; the threshold is ``lr * l1``.
        method: the prox algorithm, as for `weightshare.prox`.
        cuda_graph: run the step's prox as a CUDA graph, captured once per set of parameters,
            shapes and dtypes and replayed (the strengths live in device tensors): ``"auto"``
            (default) on CUDA, ``True`` the same but warn when the step cannot be one, ``False``
            never. Not stored in the param groups; the handle's ``eager_reason`` says why a step
            ran eagerly.

    Returns:
        A handle whose ``remove()`` stops the prox and deletes the ``wsr_*`` keys.

    Raises:
        ValueError: negative or non-finite ``lam``/``l1``, a tensor not held by the optimizer, an
            empty selection, a second live attachment, or nothing to resume from.
        IndexError: ``dim`` out of range for an attached tensor.
        TypeError: ``optimizer`` is not an ``Optimizer``, ``lam``/``l1`` is not a number, or
            ``cuda_graph`` is not a bool or a string (a string other than "auto": ValueError).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"attach expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    cuda_graph = step_graph.check_mode(cuda_graph)
    if optimizer in _LIVE:
        raise ValueError("this optimizer already has an attached prox; call .remove() first")
    if lam is None:
        if params is not None or dim is not None or l1 != 0.0 or method != "auto":
            raise ValueError(
                "attach(optimizer, None) resumes from the param groups; pass no params, dim, l1 "
                "or method"
            )
        _resume(optimizer)
    else:
        if isinstance(lam, Mapping):
            if params is not None:
                raise ValueError(
                    "lam maps parameters to strengths, which chooses the parameters: pass no params"
                )
            strengths: float | dict[int, float] = _strengths_by_param(optimizer, lam)
        else:
            strengths = _strength(lam, "lam")
        _configure(optimizer, strengths, params, dim, _strength(l1, "l1"), method)
    handle = Attachment(optimizer, cuda_graph)
    _LIVE[optimizer] = handle
    return handle


def _screen(optimizer: Optimizer, tensors: list[Tensor]) -> None:
    """NaN/inf check of the step's tensors: host tensors now, CUDA ones deferred (no sync)."""
    names = [f"parameter {i} (shape {tuple(t.shape)})" for i, t in enumerate(tensors)]
    host = [i for i, t in enumerate(tensors) if not t.is_cuda and checks.should_validate(t)]
    if host:
        checks.check_values([tensors[i] for i in host], [names[i] for i in host])
    cuda = [i for i, t in enumerate(tensors) if t.is_cuda and checks.should_validate(t)]
    attachment = _LIVE.get(optimizer)
    if cuda and attachment is not None:
        attachment._deferred.submit([tensors[i] for i in cuda], [names[i] for i in cuda])


def _found_inf(optimizer: Optimizer, kwargs: Any) -> Tensor | None:
    """The skipped-step flag of mixed precision, where the step can see one (TRAIN-22).

    ``torch.amp.GradScaler`` runs the step of an optimizer that handles the scaling itself (the
    fused Adam, AdamW, SGD, Adagrad: ``_step_supports_amp_scaling``) even when the gradients hold
    inf/NaN, with the attributes ``optimizer.found_inf`` (nonzero: the step changed nothing) and
    ``optimizer.grad_scale`` set during it; optimizers with a ``grad_scaler`` argument receive the
    scaler instead. Other optimizers are not stepped at all on a skipped step.
    """
    found = kwargs.get("found_inf") if isinstance(kwargs, dict) else None
    if found is None:
        found = getattr(optimizer, "found_inf", None)
    scaler = kwargs.get("grad_scaler") if isinstance(kwargs, dict) else None
    if found is None and scaler is not None and hasattr(scaler, "_found_inf_per_device"):
        per_device = list(scaler._found_inf_per_device(optimizer).values())
        found = sum(per_device[1:], per_device[0]) if per_device else None
    return found if isinstance(found, Tensor) else None


def _new_groups(optimizer: Optimizer) -> None:
    """Warn once about param groups added after attach without their own ``wsr_*`` keys."""
    attachment = _LIVE.get(optimizer)
    if attachment is None or len(optimizer.param_groups) <= attachment._groups:
        return
    bare = [
        i
        for i in range(attachment._groups, len(optimizer.param_groups))
        if not any(k in optimizer.param_groups[i] for k in KEYS)
    ]
    attachment._groups = len(optimizer.param_groups)
    if bare:
        warnings.warn(
            f"weightshare.attach: param group(s) {bare} were added after attach and are not "
            "regularised; give such a group its own wsr_* keys (wsr_lam, wsr_l1, wsr_dim, "
            "wsr_method, wsr_mask) or re-attach (handle.remove(), then attach(...))",
            UserWarning,
            stacklevel=3,
        )


class _Entry(NamedTuple):
    """One attached tensor of a step: its group's dim (as given and normalised), method, the
    prox strength lr·lam and the l1 threshold lr·l1."""

    p: Tensor
    dim: object
    norm_dim: int | None
    method: str
    lam: float
    threshold: float


def _collect(optimizer: Optimizer) -> list[_Entry]:
    """The step's attached tensors with a prox or a shrink (both zero: the identity), checked."""
    entries: list[_Entry] = []
    configured = False
    for i, group in enumerate(optimizer.param_groups):
        if not any(k in group for k in KEYS):
            continue
        configured = True
        _check_group(i, group)
        lr = float(group["lr"])
        dim, method = group["wsr_dim"], group["wsr_method"]
        for j, (p, on) in enumerate(zip(group["params"], group["wsr_mask"], strict=True)):
            lam = lr * _per_param(group["wsr_lam"], j)
            thresh = lr * _per_param(group["wsr_l1"], j)
            if not on or (lam <= 0 and thresh <= 0):
                continue
            if not checks.is_dtensor(p):  # DTensors: checked by the distributed prox
                checks.check_float(p, f"param group {i} parameter {j}")
                methods.check_device(method, p)
            entries.append(_Entry(p, dim, checks.normalize_dim(p, dim), method, lam, thresh))
    if not configured:
        raise RuntimeError(
            "weightshare.attach: no param group carries 'wsr_lam' (a state dict saved without an "
            "attachment was loaded?); re-attach with attach(optimizer, lam, ...)"
        )
    return entries


def _apply(
    entries: list[_Entry],
    lams: Sequence[float | Tensor],
    thresholds: Sequence[float | Tensor],
    skip: Tensor | None,
) -> None:
    """The step's prox and shrink, written into the parameters (TRAIN-1, TRAIN-8).

    All plain tensors of one method go through one ``prox_many`` pass, whatever their dims: one
    backend call per device and dtype. ``lams``/``thresholds`` are numbers, or device tensors
    (one per entry) when the step runs as a graph; ``skip`` selects the old values (TRAIN-22).
    """
    outs: list[Tensor] = [e.p for e in entries]
    passes: dict[tuple[str, bool, object], list[int]] = {}
    for i, e in enumerate(entries):
        if e.lam > 0:
            dtensor = checks.is_dtensor(e.p)  # their prox groups by the dim as given
            passes.setdefault((e.method, dtensor, e.dim if dtensor else None), []).append(i)
    for (method, dtensor, dim), members in passes.items():
        chosen = [entries[i].p for i in members]
        chosen_lams = [lams[i] for i in members]
        if dtensor:
            proxed = distributed.prox_many(chosen, chosen_lams, dim, method)
        else:
            dims = [entries[i].norm_dim for i in members]
            proxed = plain.prox_many_unchecked(chosen, chosen_lams, dims, method)
        for i, out in zip(members, proxed, strict=True):
            outs[i] = out
    for e, out, t in zip(entries, outs, thresholds, strict=True):
        if e.threshold > 0:
            out = plain.soft_threshold_unchecked(out, t)
        if skip is not None:
            out = torch.where(skip.to(e.p.device, non_blocking=True), e.p, out)
        if out is not e.p:
            e.p.copy_(out)


def _graph_obstacle(entries: list[_Entry]) -> str | None:
    """Why this step cannot be a graph (None: it can)."""
    if step_graph.capturing():
        return "the step is itself being captured"
    if any(checks.is_dtensor(e.p) for e in entries):
        return "DTensor parameters (their prox communicates)"
    if not all(step_graph.supported(e.p) for e in entries):
        return "parameters not on CUDA"
    if len({e.p.device for e in entries}) > 1:
        return "parameters on several devices"
    for e in entries:
        method = methods.resolve_method(e.method, e.p) if e.lam > 0 else "none"
        if method in ("pava", "rounds"):
            return f"method {method!r} reads device values on the host"
    return None


def _key(entries: list[_Entry], skip: Tensor | None) -> Hashable:
    """What a captured step depends on besides the strengths' values (TRAIN-25)."""
    return (
        skip is not None,
        tuple(
            (
                id(e.p),
                e.p.data_ptr(),
                tuple(e.p.shape),
                e.p.stride(),
                e.p.dtype,
                e.p.device,
                e.norm_dim,
                e.method,
                e.lam > 0,
                e.threshold > 0,
            )
            for e in entries
        ),
    )


def _step_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    found_inf = _found_inf(optimizer, kwargs)
    skip: Tensor | None = None  # on CUDA: a device-side flag, applied by a select (no sync)
    if found_inf is not None:
        if not step_graph.supported(found_inf):
            if bool(found_inf.ne(0).any()):
                return  # a skipped step: no prox, no l1
        else:
            skip = found_inf.ne(0).any()
    _new_groups(optimizer)
    entries = _collect(optimizer)
    # DTensors are checked (and their NaN/inf reported on every rank) by the distributed prox
    _screen(optimizer, [e.p for e in entries if not checks.is_dtensor(e.p)])
    if not entries:
        return
    lams = [e.lam for e in entries]
    thresholds = [e.threshold for e in entries]
    attachment = _LIVE.get(optimizer)
    graph = attachment._graph if attachment is not None else None
    with torch.no_grad():
        obstacle = "cuda_graph=False" if graph is None or graph.mode is False else None
        obstacle = obstacle or _graph_obstacle(entries)
        if graph is None or obstacle is not None:
            if graph is not None:
                graph.release()
                graph.eager(obstacle or "", warn=graph.mode is True)
            _apply(entries, lams, thresholds, skip)
            return

        def step(lam_t: Tensor, thr_t: Tensor, skip_t: Tensor | None) -> None:
            n = len(entries)
            _apply(entries, [lam_t[i] for i in range(n)], [thr_t[i] for i in range(n)], skip_t)

        graph.run(_key(entries, skip), entries[0].p.device, lams, thresholds, skip, step)


#: optimizers already warned about ``wsr_*`` keys without a hook
_WARNED: weakref.WeakSet[Optimizer] = weakref.WeakSet()


def _global_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Runs after every optimizer's step (registered when weightshare is imported): a copy of an
    attached optimizer re-attaches itself and gets this step's prox; an optimizer with ``wsr_*``
    keys but no attachment (a state dict loaded into a fresh optimizer) is warned about once."""
    if optimizer in _LIVE or not any("wsr_lam" in g for g in optimizer.param_groups):
        return
    if isinstance(optimizer.defaults, _AttachedDefaults):
        attach(optimizer, None)
        _step_hook(optimizer, args, kwargs)
    elif optimizer not in _WARNED:
        _WARNED.add(optimizer)
        warnings.warn(
            f"the param groups of this {type(optimizer).__name__} carry wsr_* settings but no "
            "prox is attached (a state dict loaded into a fresh optimizer?): its steps run "
            "without the prox; call weightshare.attach(optimizer, None) to resume",
            UserWarning,
            stacklevel=3,
        )


register_optimizer_step_post_hook(_global_hook)
