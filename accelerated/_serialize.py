"""``ws.save`` / ``ws.load``: a model's compact tensors in a safetensors file (spec STORE-5 .. 9).

The file holds, for every logical tensor (:mod:`._structures`), the tensors of its structure under
``<name>`` (a dense tensor) or ``<name>.<part>`` (``0.weight.values``, ``0.weight.labels``, …), and
one metadata entry ``"weightshare"``: JSON ``{"format_version": 1, "tensors": {name: meta}}``, where
``meta`` names the structure and its arguments. No pickle: the file is safetensors' header and raw
little-endian tensor bytes, readable (and memory-mappable) by every safetensors loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _file_checks as checks
from ._factorization import Factorization
from ._file_checks import FORMAT_VERSION
from ._hash_recipe import HashTables
from ._hashed_layers import Hashed
from ._packing import bit_width, index_dtype, unpack_bits
from ._sparse import Sparse, from_layout
from ._structures import Entry, Step, copy_into, entries, restructure
from ._symmetry import Symmetry
from ._tie import Tied

METADATA_KEY = "weightshare"

PathLike = str | os.PathLike[str]
#: a tensor's JSON description and its stored tensors, by role
Meta = dict[str, Any]
Parts = dict[str, Tensor]


def file_key(name: str, part: str) -> str:
    """The safetensors key of one part of a logical tensor (the name itself for a dense one)."""
    return f"{name}.{part}" if part else name


def collect(module: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(header, tensors)`` of a model: the JSON metadata and the tensors by file key."""
    metas: dict[str, Any] = {}
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for e in entries(module):
        meta, parts = e.record()
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ws.save: the description of {e.name!r} is not JSON: {err}") from None
        metas[e.name] = meta
        for part, t in parts.items():
            t = t.detach().cpu().contiguous()
            if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[file_key(e.name, part)] = t
    return {"format_version": FORMAT_VERSION, "tensors": metas}, tensors


def save(module: nn.Module, path: PathLike) -> None:
    """Write ``module``'s compact tensors and structures to a ``.safetensors`` file.

    Every weight is stored in its structure's compact form (spec STORE-3): the values and
    bit-packed labels of a tied weight, the bucket values and the hash recipe of a hashed one, the
    free parameters of a symmetric one, the factors of a factorized one, the non-zeros of a
    sparse one; plain tensors as they are.

    Args:
        module: The model (or one layer).
        path: The file to write (overwritten).

    Raises:
        ValueError: A tensor has a structure the file cannot describe (a chain of
            parametrizations, a foreign parametrization, a module with extra state).
    """
    from safetensors.torch import save_file

    header, tensors = collect(module)
    save_file(tensors, os.fspath(path), metadata={METADATA_KEY: json.dumps(header)})


def read(path: PathLike, *, who: str = "ws.load") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(header, tensors)`` of a file written by :func:`save`, checked as untrusted input.

    Every description is checked strictly and against the tensors present (:mod:`._file_checks`,
    spec STORE-13 .. 15) before anything is built from it.

    Raises:
        ValueError: The file is not a readable safetensors file, has no weightshare metadata,
            a malformed one, a newer format version, or descriptions that do not fit its tensors.
    """
    from safetensors import safe_open

    where = os.fspath(path)
    try:
        with safe_open(where, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError for a corrupt file
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{who}: {where} is not a readable safetensors file: {reason}") from None
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{who}: {where} has no {METADATA_KEY!r} metadata: it was not written by ws.save "
            "(read a plain safetensors file with safetensors.torch.load_file)"
        )
    try:
        header = checks.parse_header(metadata[METADATA_KEY], where)
        checks.check_file(header["tensors"], tensors, where)
    except ValueError as err:
        raise ValueError(f"{who}: {err}") from None
    return header, tensors


def load(module: nn.Module, path: PathLike) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built model of the same architecture.

    The recorded structures are applied to the model's tensors (plain ones get them, ones that
    already have the same structure are rebuilt from the file) and the values are loaded, so the
    model computes what the saved one computed (bit for bit when the dtypes are the same). Dtypes
    and devices stay the model's, as with ``load_state_dict``. Either everything is loaded, or
    nothing is changed.

    Args:
        module: The model to load into.
        path: A file written by :func:`save`.

    Returns:
        ``module``.

    Raises:
        ValueError: The file is unreadable or newer, or it does not fit the model: a tensor
            missing on either side, another shape (both named), another structure, a corrupt part.
    """
    header, tensors = read(path)
    steps = plan(module, header["tensors"], tensors, os.fspath(path))
    for step in steps:
        step()
    return module


# ---------------------------------------------------------------------------------------------
# planning: every check happens here, before anything is changed


def plan(
    module: nn.Module, metas: dict[str, Any], tensors: dict[str, Tensor], where: str = "the file"
) -> list[Step]:
    """The steps that load ``tensors`` into ``module``; raises ``ValueError`` if any would fail.

    ``metas`` and ``tensors`` are checked by :func:`read`: every size in them is bounded by the
    file, and here by the model's shapes, before any step allocates in proportion to it.
    """
    targets = {e.name: e for e in entries(module)}
    try:
        shapes = {name: e.shape for name, e in targets.items()}
        # a structured tensor of the model is floating; a plain one may not be
        dense = (e for e in targets.values() if e.kind == "dense")
        dtypes = {e.name: getattr(e.owner, e.attr).dtype for e in dense}
        checks.check_model(metas, shapes, dtypes, where)
    except ValueError as err:
        raise ValueError(f"ws.load: {err}") from None
    grouped, _ = checks.group(metas, tensors)
    steps = []
    for name, meta in metas.items():
        e, parts = targets[name], grouped[name]
        try:
            step, _needed = _STAGERS[meta["kind"]](e, meta, parts)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            msg = err.args[0] if isinstance(err, ValueError) and err.args else repr(err)
            msg = " ".join(str(msg).split())[:300]  # one short line, whatever raised it
            raise ValueError(f"ws.load: {where}: tensor {checks.short(name)}: {msg}") from None
        steps.append(step)
    return steps


def _part(parts: dict[str, Tensor], part: str, shape: tuple[int, ...] | None = None) -> Tensor:
    if part not in parts:
        raise ValueError(f"the file has no part {part!r}")
    t = parts[part]
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"part {part!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _check_kind(e: Entry, kind: str) -> None:
    if e.kind is None:
        raise ValueError(e.problem)
    if e.kind not in ("dense", kind) or (kind == "dense" and e.kind != "dense"):
        raise ValueError(f"it is {e.kind} in the model but {kind} in the file")


def _device(e: Entry) -> torch.device:
    return next(iter(e.parts().values())).device


def _stage_dense(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "dense")
    t = _part(parts, "", e.shape)
    dst = getattr(e.owner, e.attr)
    if dst.is_floating_point() != t.is_floating_point():
        raise ValueError(f"it is {dst.dtype} in the model but {t.dtype} in the file")
    return lambda: copy_into(dst, t), [""]


def _stage_tied(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "tied")
    k = int(meta["num_values"])
    if k < 1 or meta.get("bits", bit_width(k)) != bit_width(k):
        raise ValueError(f"num_values {k} and bits {meta.get('bits')} do not agree")
    values = _part(parts, "values", (k,))
    flat = unpack_bits(_part(parts, "labels"), bit_width(k), e.numel, dtype=index_dtype(k))
    bad = int((flat >= k).sum())
    if bad:
        raise ValueError(f"the packed labels have {bad} entries outside [0, {k})")
    tied = Tied(flat.reshape(e.shape).to(_device(e)), k)
    return restructure(e, tied, True, [values]), ["values", "labels"]


def _stage_hashed(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "hashed")
    k = int(meta["num_buckets"])
    values = _part(parts, "values", (k,))
    packed = parts.get("index") if meta.get("callable") else None
    needed = ["values", "index"] if meta.get("callable") else ["values"]
    s = e.structure
    if isinstance(s, HashTables) and not parametrize.is_parametrized(e.owner, e.attr):
        tables = s.tables_from(meta, packed)  # a hashed layer: rebuild its tables in place

        def step() -> None:
            s.install(meta, *tables)
            copy_into(cast(Tensor, s.values), values)

        return step, needed
    if meta.get("callable"):
        if packed is None:
            raise ValueError("the file has no part 'index' for its callable hash")
        n = e.numel
        table = unpack_bits(packed, bit_width(k), n, dtype=index_dtype(k)).reshape(e.shape)

        def fixed(shape: tuple[int, ...], num_buckets: int, **_: Any) -> Tensor:
            return table

        fixed.__name__ = str(meta["hash"])
        hash_fn: Any = fixed
    else:
        hash_fn = meta["hash"]
    structure = Hashed(
        e.shape,
        k,
        hash=hash_fn,
        seed=meta["seed"],
        signed=meta["signed"],
        device=_device(e),
        hash_kwargs=meta["hash_kwargs"],
    )
    return restructure(e, structure, True, [values]), needed


def _stage_symmetric(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "symmetric")
    structure = Symmetry(meta["symmetry"], e.shape, device=_device(e), **meta["kind_kwargs"])
    free = _part(parts, "free", (structure.num_free,))
    return restructure(e, structure, True, [free]), ["free"]


def _stage_factorized(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "factorized")
    structure = Factorization(int(meta["depth"]))
    names = [f"factor{d}" for d in range(structure.depth)]
    factors = [_part(parts, n, e.shape) for n in names]
    return restructure(e, structure, False, factors), names


def _stage_sparse(e: Entry, meta: Meta, parts: Parts) -> tuple[Step, list[str]]:
    _check_kind(e, "sparse")
    layout = {**meta, **{p: t for p, t in parts.items() if p != "values"}}
    positions, labels, k = from_layout(layout, e.shape, _device(e))
    values = _part(parts, "values", (positions.numel() if k is None else k,))
    structure = Sparse(e.shape, positions, labels, k)
    needed = ["values", *(["bitmap"] if meta["layout"] == "bitmap" else ["indptr", "indices"])]
    return restructure(e, structure, True, [values]), needed + ([] if k is None else ["labels"])


_STAGERS: dict[str, Callable[[Entry, Meta, Parts], tuple[Step, list[str]]]] = {
    "dense": _stage_dense,
    "tied": _stage_tied,
    "hashed": _stage_hashed,
    "symmetric": _stage_symmetric,
    "factorized": _stage_factorized,
    "sparse": _stage_sparse,
}

__all__ = ["FORMAT_VERSION", "load", "read", "save"]
