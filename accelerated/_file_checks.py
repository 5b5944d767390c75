r"""A weightshare file is untrusted input: its header is checked before anything is built from it.

Spec page *Storage*, *Threat model* (STORE-13 .. STORE-17). :func:`parse_header` reads the
metadata JSON with bounded nesting, bounded integers, finite numbers and no repeated keys;
:func:`check_file` checks every description strictly (known keys only, exact types, enums) and
against the tensors the file holds, so that every size a later step allocates or iterates over is
bounded by the file's bytes; :func:`check_model` compares the names and shapes with the model's.
Errors are short ``ValueError``\ s: names are shortened and at most :data:`SHOWN` of them listed.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._coded import GAPS, STREAM_FIELDS, stream_sizes
from ._hashing import HASHES
from ._packing import bit_width
from ._sparse import LAYOUTS
from ._structures import KINDS
from .reference._args import MAX_BUCKETS, check_alpha, check_radius, is_int, parse_kind

#: The format version this weightshare reads; a newer file is refused. ``ws.save`` writes the
#: lowest that describes its file: 1 without coded parts, 2 with (STORE-24).
FORMAT_VERSION = 2
#: The deepest nesting of JSON arrays and objects a header may have (a written one has 4).
MAX_NESTING = 32
#: The most digits a JSON integer may have (the largest field, a seed, has 20).
MAX_DIGITS = 40
#: The most dimensions of a shape, and the largest number of entries (torch sizes are int64).
MAX_NDIM = 64
MAX_NUMEL = (1 << 63) - 1
#: The most names an error lists before "and N more", and the characters shown of each.
SHOWN = 5
NAME_CHARS = 60

_COMMON = ("kind", "shape", "dtype")
FIELDS: dict[str, tuple[str, ...]] = {
    "dense": _COMMON,
    "tied": (*_COMMON, "num_values", "bits"),
    "hashed": (*_COMMON, "num_buckets", "hash", "seed", "signed", "hash_kwargs", "callable"),
    "symmetric": (*_COMMON, "symmetry", "kind_kwargs", "num_free"),
    "factorized": (*_COMMON, "depth"),
    "sparse": (*_COMMON, "nnz", "num_values", "layout"),
}
#: The kinds whose description has a ``coding`` field from version 2 on, and its streams.
CODED_STREAMS: dict[str, tuple[str, ...]] = {"tied": ("labels",), "sparse": ("labels", "gaps")}
_HASH_KWARGS: dict[str, dict[str, Callable[[object], object]]] = {
    "uniform": {},
    "dense": {},
    "dirichlet": {"alpha": check_alpha},
    "neighborhood": {"radius": check_radius},
}

# ---------------------------------------------------------------------------------------------
# short messages


def short(name: str) -> str:
    """``repr(name)``, cut to :data:`NAME_CHARS` characters (then ``...``)."""
    return repr(name) if len(name) <= NAME_CHARS else repr(name[:NAME_CHARS]) + "..."


def shown(names: Collection[str]) -> str:
    """The first :data:`SHOWN` names in order, shortened, then ``and N more``."""
    first = heapq.nsmallest(SHOWN, names)
    text = ", ".join(short(n) for n in first)
    more = len(names) - len(first)
    return f"[{text}, ... and {more:,} more]" if more else f"[{text}]"


def _value(x: object) -> str:
    """A JSON value for a message: its type and, when short, the value."""
    kind = type(x).__name__
    if isinstance(x, dict | list):
        return kind
    text = repr(x)
    return f"{kind} {text}" if len(text) <= 30 else kind


# ---------------------------------------------------------------------------------------------
# the JSON text

# a JSON string, or an unterminated one up to the end; the lookahead and back reference make the
# match atomic, so each opening quote is scanned once (linear time on any text)
_STRING = re.compile(r'"(?=([^"\\]*(?:\\.[^"\\]*)*))\1(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if chr(c) not in "[]{}")
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_CHUNK = 1 << 20


def nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets in strings skipped).

    Exact for valid JSON and up to the first syntax error otherwise, which is as far as a parser
    goes. Linear time; memory of a few bytes per bracket.
    """
    bare = _STRING.sub("", text).encode("utf-8", "replace").translate(None, _NOT_BRACKETS)
    steps = np.frombuffer(bare, dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(steps), _CHUNK):
        levels = np.cumsum(_STEP[steps[start : start + _CHUNK]], dtype=np.int64) + depth
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _constant(name: str) -> float:
    raise ValueError(f"it holds the non-standard JSON constant {name}")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"it holds the number {text[:NAME_CHARS]}, which is not finite")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"it holds an integer of {len(text):,} digits")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"an object repeats the key {short(key)}")
        out[key] = value
    return out


def parse_header(text: object, where: str) -> dict[str, Any]:
    """The checked ``{"format_version": 1, "tensors": {...}[, "shared": {...}]}`` of a file's
    metadata string.

    Raises:
        ValueError: Not JSON, nested deeper than :data:`MAX_NESTING`, a non-finite number, a
            huge integer, a repeated key, other or missing top-level keys, an unknown version.
    """
    bad = f"the weightshare metadata of {where} is malformed"
    if not isinstance(text, str):
        raise ValueError(f"{bad}: it is not a string")
    deepest = nesting(text)
    if deepest > MAX_NESTING:
        raise ValueError(f"{bad}: it is nested deeper than {MAX_NESTING} (at least {deepest:,})")
    try:
        header = json.loads(
            text,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
            object_pairs_hook=_object,
        )
    except ValueError as err:  # JSONDecodeError is one
        raise ValueError(f"{bad}: {str(err)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{bad}: it is a JSON {_value(header)}, not an object")
    need, optional = {"format_version", "tensors"}, {"shared"}
    if header.keys() - optional != need:
        missing, unknown = sorted(need - header.keys()), sorted(header.keys() - need - optional)
        raise ValueError(f"{bad}: missing key(s) {shown(missing)}, unknown key(s) {shown(unknown)}")
    shared = header.get("shared", {})
    if not isinstance(shared, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in shared.items()
    ):
        raise ValueError(f"{bad}: 'shared' must map names to names, got {_value(shared)}")
    version, metas = header["format_version"], header["tensors"]
    if not is_int(version) or version < 1:
        raise ValueError(f"{bad}: 'format_version' must be an int >= 1, got {_value(version)}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version}, newer than this weightshare's "
            f"{FORMAT_VERSION}: upgrade weightshare to read it"
        )
    if not isinstance(metas, dict):
        raise ValueError(f"{bad}: 'tensors' must be an object, got {_value(metas)}")
    return header


# ---------------------------------------------------------------------------------------------
# descriptions against the tensors present


def group(
    metas: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """The file's tensors by described name and part (``""`` for a dense one), and the rest."""
    groups: dict[str, dict[str, Tensor]] = {name: {} for name in metas}
    rest = []
    for key, t in tensors.items():
        if key in metas:
            groups[key][""] = t
            continue
        name, _, part = key.rpartition(".")
        if name in metas:
            groups[name][part] = t
        else:
            rest.append(key)
    return groups, rest


def check_file(
    metas: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str, version: int = 1
) -> dict[str, dict[str, Tensor]]:
    """Check every description and its parts; return the parts by name.

    Raises:
        ValueError: (naming the file and the tensor) a tensor of the file that no description
            claims, or a description that is malformed or disagrees with its tensors.
    """
    groups, rest = group(metas, tensors)
    if rest:
        raise ValueError(f"{where}: the file's tensors {shown(rest)} belong to no description")
    for name, meta in metas.items():
        try:
            _check_parts(meta, _expected(meta, groups[name], version), groups[name])
        except ValueError as err:
            raise ValueError(f"{where}: tensor {short(name)}: {err}") from None
    return groups


def check_model(
    metas: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, torch.dtype],
    where: str,
) -> None:
    """The file describes exactly the model's tensors, with their shapes (names listed short).

    A structure other than ``dense`` goes only to a floating tensor of the model.
    """
    missing = shapes.keys() - metas.keys()
    if missing:
        raise ValueError(f"{where}: the file has no tensor for {shown(missing)} of the model")
    extra = metas.keys() - shapes.keys()
    if extra:
        raise ValueError(f"{where}: the file's tensors {shown(extra)} are not in the model")
    for name, meta in metas.items():
        shape = tuple(meta["shape"])
        if shape != shapes[name]:
            raise ValueError(
                f"{where}: tensor {short(name)} has shape {shape} in the file but "
                f"{shapes[name]} in the model"
            )
        dtype = dtypes.get(name)  # None: a structured tensor of the model, floating
        if meta["kind"] != "dense" and dtype is not None and not dtype.is_floating_point:
            raise ValueError(
                f"{where}: tensor {short(name)} is {dtype} in the model; a {meta['kind']} "
                "tensor must be floating"
            )


#: what a part must be: ("float", shape) for values of the description's dtype,
#: ("packed", bytes) for a bit-packed uint8 vector, ("dense", shape) for a plain tensor
Expected = dict[str, tuple[str, Any]]


def _field_int(meta: Mapping[str, Any], key: str, low: int, high: int, what: str = "") -> int:
    v = meta[key]
    if not is_int(v):
        raise ValueError(f"field {key!r} must be an int, got {_value(v)}")
    if not low <= v <= high:
        raise ValueError(f"field {key!r} must be in {what or f'[{low}, {high}]'}, got {v}")
    return v


def _field(meta: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    v = meta[key]
    if not isinstance(v, types):
        raise ValueError(f"field {key!r} must be {what}, got {_value(v)}")
    return v


def _enum(meta: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    v = meta[key]
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"field {key!r} must be one of {choices}, got {_value(v)}")
    return v


def _shape(v: object, positive: bool) -> tuple[int, ...]:
    low = 1 if positive else 0
    if not isinstance(v, list) or len(v) > MAX_NDIM or not all(is_int(d) and d >= low for d in v):
        raise ValueError(
            f"field 'shape' must be a list of ints >= {low} (at most {MAX_NDIM}), got {_value(v)}"
        )
    if math.prod(v) > MAX_NUMEL:
        raise ValueError(f"field 'shape' has more than 2**63 - 1 entries: {v}")
    return tuple(v)


def _packed(count: int, bits: int) -> tuple[str, int]:
    return ("packed", math.ceil(count * bits / 8))


def _coding(meta: Mapping[str, Any], version: int, kind: str) -> dict[str, Any]:
    """The ``coding`` field (version >= 2): an object of known streams (empty before)."""
    if version < 2 or kind not in CODED_STREAMS:
        return {}
    coding: dict[str, Any] = _field(meta, "coding", dict, "an object")
    unknown = sorted(coding.keys() - set(CODED_STREAMS[kind]))
    if unknown:
        raise ValueError(
            f"field 'coding' has unknown stream(s) {shown(unknown)} (a {kind} tensor codes "
            f"{list(CODED_STREAMS[kind])})"
        )
    return coding


def _stream(coding: Mapping[str, Any], stream: str, count: int, domain: int) -> Expected:
    """The parts of a coded stream of ``count`` values in ``[0, domain)``, its fields checked."""
    desc = coding[stream]
    where = f"coding {stream!r}"
    if not isinstance(desc, dict) or desc.keys() != set(STREAM_FIELDS):
        raise ValueError(f"{where} must be an object with exactly the fields {list(STREAM_FIELDS)}")
    if count < 1:
        raise ValueError(f"{where} codes no values: nothing to code")
    try:
        _field_int(desc, "symbols", 1, min(count, domain))
        _field_int(desc, "bytes", 1, MAX_NUMEL // 8)
        _field_int(desc, "block", 1, MAX_NUMEL)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return dict(stream_sizes(desc, stream, count, domain))


def _expected(meta: object, parts: Mapping[str, Tensor], version: int = 1) -> Expected:
    """Check a description's fields; return the parts it needs, each with its dtype and size."""
    if not isinstance(meta, dict):
        raise ValueError(f"the description must be a JSON object, got {_value(meta)}")
    if "kind" not in meta:
        raise ValueError("the description has no field 'kind'")
    kind = _enum(meta, "kind", KINDS)
    fields = FIELDS[kind] + (("coding",) if version >= 2 and kind in CODED_STREAMS else ())
    missing, unknown = [k for k in fields if k not in meta], sorted(meta.keys() - set(fields))
    if missing or unknown:
        problems = [f"missing field(s) {shown(missing)}"] if missing else []
        problems += [f"unknown field(s) {shown(unknown)}"] if unknown else []
        raise ValueError(f"{', '.join(problems)} (a {kind} description has {list(fields)})")
    _field(meta, "dtype", str, "a str (a torch dtype)")
    shape = _shape(meta["shape"], positive=kind in ("hashed", "symmetric"))
    numel = math.prod(shape)
    if kind == "dense":
        return {"": ("dense", shape)}
    if kind == "tied":
        k = _field_int(meta, "num_values", 1, MAX_BUCKETS, "[1, 2**62]")
        bits = _field_int(meta, "bits", 0, 63)
        if bits != bit_width(k):
            raise ValueError(f"field 'bits' is {bits}, but {k} values take {bit_width(k)} bits")
        coding = _coding(meta, version, kind)
        if "labels" in coding:
            return {"values": ("float", (k,)), **_stream(coding, "labels", numel, k)}
        return {"values": ("float", (k,)), "labels": _packed(numel, bits)}
    if kind == "hashed":
        return _expected_hashed(meta, shape, numel)
    if kind == "symmetric":
        symmetry = _field(meta, "symmetry", str, "a str")
        kwargs = _field(meta, "kind_kwargs", dict, "an object")
        count = _field_int(meta, "num_free", 0, MAX_NUMEL, "[0, 2**63)")  # the part bounds it
        try:
            parse_kind(symmetry, shape, kwargs)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(f"field 'symmetry' or 'kind_kwargs': {err}") from None
        return {"free": ("float", (count,))}
    if kind == "factorized":
        # bounded by the parts present before the part names are built
        n = max(len(parts), 1)
        depth = _field_int(meta, "depth", 1, n, f"[1, {n}] (the parts the file has for it)")
        return {f"factor{d}": ("float", shape) for d in range(depth)}
    # sparse
    nnz = _field_int(meta, "nnz", 0, numel)
    k = meta["num_values"]
    if k is not None:
        k = _field_int(meta, "num_values", 1, MAX_BUCKETS, "[1, 2**62] or null")
    coding = _coding(meta, version, kind)
    layout = _enum(meta, "layout", LAYOUTS + ((GAPS,) if version >= 2 else ()))
    if (layout == GAPS) != ("gaps" in coding):
        raise ValueError(f"field 'layout' is {layout!r}: the layout {GAPS!r} goes with coded gaps")
    if k is None and "labels" in coding:
        raise ValueError("field 'coding' codes labels, but the tensor has no codebook")
    out: Expected = {"values": ("float", (nnz if k is None else k,))}
    if layout == GAPS:
        out.update(_stream(coding, "gaps", nnz, numel))
    elif layout == "bitmap":
        out["bitmap"] = _packed(numel, 1)
    else:
        rows = shape[0] if shape else 1
        cols = numel // rows if rows else 0
        out["indptr"] = _packed(rows + 1, bit_width(nnz + 1))
        out["indices"] = _packed(nnz, bit_width(max(cols, 1)))
    if k is not None and "labels" in coding:
        out.update(_stream(coding, "labels", nnz, k))
    elif k is not None:
        out["labels"] = _packed(nnz, bit_width(k))
    return out


def _expected_hashed(meta: Mapping[str, Any], shape: tuple[int, ...], numel: int) -> Expected:
    k = _field_int(meta, "num_buckets", 1, MAX_BUCKETS, "[1, 2**62]")
    _field_int(meta, "seed", 0, (1 << 64) - 1, "[0, 2**64)")
    _field(meta, "signed", bool, "a bool")
    is_callable = _field(meta, "callable", bool, "a bool")
    name = _field(meta, "hash", str, "a str")
    kwargs = _field(meta, "hash_kwargs", dict, "an object")
    out: Expected = {"values": ("float", (k,))}
    if is_callable:  # its table is in the file; the name is only a label
        out["index"] = _packed(numel, bit_width(k))
        return out
    if name not in _HASH_KWARGS:
        raise ValueError(f"field 'hash' must be one of {HASHES}, got {_value(name)}")
    allowed = _HASH_KWARGS[name]
    if kwargs.keys() != allowed.keys():
        raise ValueError(
            f"field 'hash_kwargs' of hash {name!r} must have the keys {sorted(allowed)}, "
            f"got {shown(kwargs.keys())}"
        )
    for key, check in allowed.items():
        try:
            check(kwargs[key])
        except (TypeError, ValueError) as err:
            raise ValueError(f"field 'hash_kwargs': {err}") from None
    if name == "dense" and k != numel:
        raise ValueError(f"hash 'dense' needs num_buckets = {numel} entries, got {k}")
    return out


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check_parts(meta: Mapping[str, Any], expected: Expected, parts: Mapping[str, Tensor]) -> None:
    """The parts are those expected, each of the dtype and size its description says."""
    missing = [p for p in expected if p not in parts]
    if missing:
        raise ValueError(f"the file has no part {short(missing[0])}")
    extra = parts.keys() - expected.keys()
    if extra:
        raise ValueError(f"the file has parts {shown(extra)} that its description does not name")
    dtype = meta["dtype"]
    for part, (role, size) in expected.items():
        t = parts[part]
        got = _dtype_name(t)
        if role == "packed":
            if t.dtype != torch.uint8 or t.ndim != 1:
                raise ValueError(
                    f"part {part!r} must be a uint8 vector, got {got} of shape {tuple(t.shape)}"
                )
            if t.numel() != size:
                raise ValueError(f"part {part!r} has {t.numel()} bytes, expected {size}")
            continue
        if got != dtype:
            raise ValueError(f"part {part!r} is {got} but its description says {dtype}")
        if role == "float" and not t.is_floating_point():
            raise ValueError(f"part {part!r} is {got}, not a floating dtype")
        if tuple(t.shape) != size:
            raise ValueError(f"part {part!r} has shape {tuple(t.shape)}, expected {size}")
