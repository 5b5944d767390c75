"""``ws.save`` / ``ws.load``: a model's compact tensors in a safetensors file (spec STORE-5 .. 9).

The file holds, for every logical tensor (:mod:`._structures`), the tensors of its structure under
``<name>`` (a dense tensor) or ``<name>.<part>`` (``0.weight.values``, ``0.weight.labels``, …), and
one metadata entry ``"weightshare"``: JSON ``{"format_version": 1, "tensors": {name: meta}}``, where
``meta`` names the structure and its arguments (version 2 when labels or positions are entropy
coded, :mod:`._coded`). No pickle: the file is safetensors' header and raw little-endian tensor
bytes, readable (and memory-mappable) by every safetensors loader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _coded as coded
from . import _file_checks as checks
from ._dropped import tracking
from ._factorization import Factorization
from ._file_checks import FORMAT_VERSION
from ._hash_recipe import HashTables
from ._hashed_layers import Hashed
from ._memory_format import in_format
from ._packing import bit_width, index_dtype, unpack_bits
from ._sparse import Sparse, decode_positions, from_layout
from ._structures import (
    Entry,
    Step,
    copy_into,
    current_memory_format,
    entries,
    restructure,
)
from ._symmetry import Symmetry
from ._tie import Tied
from ._transaction import transaction

METADATA_KEY = "weightshare"
#: The header key mapping every further name of a shared tensor to the name it is stored under.
SHARED_KEY = "shared"

PathLike = str | os.PathLike[str]
#: a tensor's JSON description and its stored tensors, by role
Meta = dict[str, Any]
Parts = dict[str, Tensor]


def file_key(name: str, part: str) -> str:
    """The safetensors key of one part of a logical tensor (the name itself for a dense one)."""
    return f"{name}.{part}" if part else name


def collect(module: nn.Module, coding: bool = True) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(header, tensors)`` of a model: the JSON metadata and the tensors by file key.

    With ``coding``, labels and sparse positions are entropy coded where that is smaller
    (:mod:`._coded`); the header's version is the lowest that describes the file.
    """
    metas: dict[str, Any] = {}
    shared: dict[str, str] = {}
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for e in entries(module):
        meta, parts = e.record()
        if coding and isinstance(e.structure, Tied | Sparse):
            s = e.structure
            positions = s.positions if isinstance(s, Sparse) else None
            meta, parts = coded.choose(e.name, meta, parts, s.labels, positions)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"ws.save: the description of {e.name!r} is not JSON: {err}") from None
        metas[e.name] = meta
        shared.update(dict.fromkeys(e.names[1:], e.name))
        for part, t in parts.items():
            t = t.detach().cpu().contiguous()
            if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[file_key(e.name, part)] = t
    version = 2 if any(m.get("coding") for m in metas.values()) else 1
    if version == 1:
        for m in metas.values():
            m.pop("coding", None)
    header: dict[str, Any] = {"format_version": version, "tensors": metas}
    if shared:
        header[SHARED_KEY] = shared
    return header, tensors


def save(module: nn.Module, path: PathLike, *, coding: bool = True) -> None:
    """Write ``module``'s compact tensors and structures to a ``.safetensors`` file.

    Every weight is stored in its structure's compact form (spec STORE-3): the values and
    bit-packed labels of a tied weight, the bucket values and the hash recipe of a hashed one, the
    free parameters of a symmetric one, the factors of a factorized one, the non-zeros of a
    sparse one; plain tensors as they are. The labels of tied and sparse-tied weights and the
    positions of sparse ones are entropy coded (canonical Huffman, spec STORE-24) where that takes
    fewer bytes than fixed-width; a file without coded parts has format version 1, as before.

    Args:
        module: The model (or one layer).
        path: The file to write (overwritten).
        coding: Entropy code where smaller (``False``: fixed-width only, format version 1).

    Raises:
        ValueError: A tensor has a structure the file cannot describe (a chain of
            parametrizations, a foreign parametrization, a module with extra state).
    """
    from safetensors.torch import save_file

    header, tensors = collect(module, coding=bool(coding))
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
        checks.check_file(header["tensors"], tensors, where, header["format_version"])
    except ValueError as err:
        raise ValueError(f"{who}: {err}") from None
    return header, tensors


def load(module: nn.Module, path: PathLike) -> nn.Module:
    """Load a file written by :func:`save` into a freshly built model of the same architecture.

    The recorded structures are applied to the model's tensors (plain ones get them, ones that
    already have the same structure are rebuilt from the file) and the values are loaded, so the
    model computes what the saved one computed (bit for bit when the dtypes are the same). Dtypes,
    devices and memory formats stay the model's, as with ``load_state_dict``. A tensor the model
    shares between modules gets one structure that all of them see. Either everything is loaded,
    or nothing is changed (also when applying a part fails: the model is rolled back). Build the
    optimizer afterwards: one that holds a ``Parameter`` this load drops (a weight that becomes
    factorized) warns at its first ``step()``.

    Args:
        module: The model to load into.
        path: A file written by :func:`save`.

    Returns:
        ``module``.

    Raises:
        ValueError: The file is unreadable or newer, or it does not fit the model: a tensor
            missing on either side, another shape (both named), another structure, a corrupt part,
            different tensors for one the model shares, a model on the meta device.
    """
    header, tensors = read(path)
    steps = plan(module, header["tensors"], tensors, header.get(SHARED_KEY, {}), os.fspath(path))
    with tracking(module, "replaced by ws.load"), transaction(module):
        for step in steps:
            step()
    return module


# ---------------------------------------------------------------------------------------------
# planning: every check happens here, before anything is changed


def plan(
    module: nn.Module,
    metas: dict[str, Any],
    tensors: dict[str, Tensor],
    shared: Any = None,
    where: str = "the file",
) -> list[Step]:
    """The steps that load ``tensors`` into ``module``; raises ``ValueError`` if any would fail.

    ``metas`` and ``tensors`` are checked by :func:`read`: every size in them is bounded by the
    file, and here by the model's shapes, before any step allocates in proportion to it.
    ``shared`` maps the further names of a tensor the saved model shared to the name it is
    stored under. A tensor the model shares (several names, one entry) takes its one stored
    tensor; several stored tensors only if they are identical.
    """
    groups = entries(module)
    sources = _match(groups, metas, shared or {}, where)
    _refuse_meta(groups, where)
    grouped, _ = checks.group(metas, tensors)
    steps = []
    for e, src in zip(groups, sources, strict=True):
        name = src[0]
        meta, parts = metas[name], grouped[name]
        for other in src[1:]:
            if not _same_tensor(meta, parts, metas[other], grouped[other]):
                raise ValueError(
                    f"ws.load: {where}: {checks.shown(e.names)} are one shared tensor in the "
                    f"model but the file holds different tensors {checks.short(name)} and "
                    f"{checks.short(other)}: load it into a model that does not share them"
                )
        shape = tuple(meta["shape"])
        if shape != e.shape:
            raise ValueError(
                f"ws.load: {where}: tensor {checks.short(name)} has shape {shape} in the file but "
                f"{e.shape} in the model"
            )
        if meta["kind"] != "dense" and e.kind == "dense":
            dtype = getattr(e.owner, e.attr).dtype
            if not dtype.is_floating_point:  # a structure goes only to a floating tensor
                raise ValueError(
                    f"ws.load: {where}: tensor {checks.short(name)} is {dtype} in the model; a "
                    f"{meta['kind']} tensor must be floating"
                )
        try:
            step, _needed = _STAGERS[meta["kind"]](e, meta, parts)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            msg = err.args[0] if isinstance(err, ValueError) and err.args else repr(err)
            msg = " ".join(str(msg).split())[:300]  # one short line, whatever raised it
            raise ValueError(f"ws.load: {where}: tensor {checks.short(name)}: {msg}") from None
        steps.append(step)
    return steps


def _match(groups: list[Entry], metas: dict[str, Any], shared: Any, where: str) -> list[list[str]]:
    """For each logical tensor of the model, the described tensors of the file it takes (its
    names, each resolved through the file's ``"shared"`` map); every file tensor is taken."""
    shared = _shared_map(shared, metas, where)
    names = [n for e in groups for n in e.names]
    missing = sorted(n for n in names if shared.get(n, n) not in metas)
    if missing:
        raise ValueError(
            f"ws.load: {where}: the file has no tensor for {checks.shown(missing)} of the model"
        )
    sources = [list(dict.fromkeys(shared.get(n, n) for n in e.names)) for e in groups]
    extra = sorted((set(metas) | set(shared)) - set(names) - {s for src in sources for s in src})
    if extra:
        raise ValueError(
            f"ws.load: {where}: the file's tensors {checks.shown(extra)} are not in the model"
        )
    return sources


def _refuse_meta(groups: list[Entry], where: str) -> None:
    on_meta = [e.name for e in groups if any(t.is_meta for t in e.parts().values())]
    if on_meta:
        raise ValueError(
            f"ws.load: {where}: the model's tensors {checks.shown(on_meta)} are on the meta "
            "device and hold no "
            "memory to load into; materialize the model first (model.to_empty(device=...))"
        )


def _shared_map(shared: Any, metas: dict[str, Any], where: str) -> dict[str, str]:
    """The file's map of shared names, checked: each further name to a described tensor."""
    if not isinstance(shared, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in shared.items()
    ):
        raise ValueError(f"ws.load: {where}: the file's {SHARED_KEY!r} map is not names to names")
    bad = [k for k, v in shared.items() if k in metas or v not in metas]
    if bad:
        raise ValueError(
            f"ws.load: {where}: the file's {SHARED_KEY!r} map names {checks.shown(bad)}, which "
            "are described "
            "tensors or point to no described tensor"
        )
    return shared


def _same_tensor(meta: Meta, parts: Parts, other_meta: Meta, other: Parts) -> bool:
    """Whether two described tensors of a file are the same (description and parts)."""
    return (
        meta == other_meta
        and parts.keys() == other.keys()
        and all(
            parts[k].dtype == other[k].dtype
            and parts[k].shape == other[k].shape
            and torch.equal(parts[k], other[k])
            for k in parts
        )
    )


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
    stream = meta.get("coding", {}).get("labels")
    if stream is not None:
        flat = coded.decode_labels(stream, parts, e.numel, k).to(index_dtype(k))
    else:
        flat = unpack_bits(_part(parts, "labels"), bit_width(k), e.numel, dtype=index_dtype(k))
    bad = int((flat >= k).sum())
    if bad:
        raise ValueError(f"the packed labels have {bad} entries outside [0, {k})")
    labels = in_format(flat.reshape(e.shape).to(_device(e)), current_memory_format(e))
    tied = Tied(labels, k)
    return restructure(e, tied, True, [values]), ["values", "labels"]  # (or the coded labels)


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
    coding = meta.get("coding", {})
    if coding:
        positions, labels, k = _coded_layout(coding, meta, parts, e)
    else:
        layout = {**meta, **{p: t for p, t in parts.items() if p != "values"}}
        positions, labels, k = from_layout(layout, e.shape, _device(e))
    values = _part(parts, "values", (positions.numel() if k is None else k,))
    structure = Sparse(e.shape, positions, labels, k, memory_format=current_memory_format(e))
    return restructure(e, structure, True, [values]), [
        "values",
        *(p for p in parts if p != "values"),
    ]


def _coded_layout(
    coding: Meta, meta: Meta, parts: Parts, e: Entry
) -> tuple[Tensor, Tensor | None, int | None]:
    """``(positions, labels, num_values)`` of a sparse tensor with coded parts, checked."""
    nnz, k = int(meta["nnz"]), meta["num_values"]
    if "gaps" in coding:
        positions = coded.decode_gaps(coding["gaps"], parts, nnz, e.numel)
    else:
        positions = decode_positions({**meta, **parts}, e.shape, nnz)
    labels = None
    if k is not None and "labels" in coding:
        labels = coded.decode_labels(coding["labels"], parts, nnz, k)
    elif k is not None:
        labels = unpack_bits(_part(parts, "labels"), bit_width(k), nnz)
        if bool((labels >= k).any()):
            raise ValueError(f"the sparse labels have entries outside [0, {k})")
    device = _device(e)
    out = None if labels is None else labels.to(device=device, dtype=index_dtype(k or 1))
    return positions.to(device=device, dtype=index_dtype(e.numel)), out, k


_STAGERS: dict[str, Callable[[Entry, Meta, Parts], tuple[Step, list[str]]]] = {
    "dense": _stage_dense,
    "tied": _stage_tied,
    "hashed": _stage_hashed,
    "symmetric": _stage_symmetric,
    "factorized": _stage_factorized,
    "sparse": _stage_sparse,
}

__all__ = ["FORMAT_VERSION", "load", "read", "save"]
