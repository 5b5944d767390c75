"""A file is untrusted input (spec page ``storage``, *Threat model*, STORE-13 .. STORE-17).

Files are written with safetensors directly so that their header says what an attacker wants:
wrong types, huge sizes, non-finite numbers, deep nesting, unknown and missing keys. Loading one
must raise a short ``ValueError`` naming the file and the tensor and change nothing, or load it
correctly; the work is bounded by the file and the model, checked with a tracemalloc peak.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import weightshare as ws
import weightshare.reference as ref
from weightshare import hashing
from weightshare import nn as wnn
from weightshare._storage import main as storage_main

#: Python allocations (tracemalloc) a load of the models below may make, far above a legit load's
#: (measured: under 0.3 MB) and far below what a size taken from the file could cost.
PEAK_BOUND = 4 << 20
#: The longest error message a hostile file may produce.
MESSAGE_BOUND = 1000


def _model(structured: bool = True) -> torch.nn.Sequential:
    """One tensor of every kind, small."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        wnn.HashedLinear(6, 4, 5, seed=3),
        torch.nn.Linear(4, 4),  # tied
        torch.nn.Linear(4, 4),  # symmetric (chunk)
        torch.nn.Linear(4, 4),  # factorized
        torch.nn.Linear(4, 4),  # sparse with a codebook
        torch.nn.Linear(4, 4),  # hashed parametrization (dirichlet)
        torch.nn.Linear(4, 16),  # sparse csr
        torch.nn.BatchNorm1d(16),
    )
    if structured:
        with torch.no_grad():
            m[1].weight.copy_(torch.randint(0, 3, (4, 4)).float())
            m[4].weight.mul_(torch.rand(4, 4) < 0.5).copy_(torch.round(m[4].weight * 2) / 2)
            m[6].weight.mul_(torch.arange(64).reshape(16, 4) == 9)
        ws.tie(m[1])
        ws.symmetric(m[2], kind="chunk", chunks=2, dim=1)
        ws.factorize(m[3], depth=2)
        ws.compress(m[4])
        hashing.hashed(m[5], num_buckets=3, hash="dirichlet", alpha=0.5, seed=1)
        ws.compress(m[6], max_values=1)
    return m


_SAVED: dict[str, Any] = {}


def _saved() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header and tensors of the saved model (built once)."""
    if not _SAVED:
        from weightshare._serialize import collect

        header, tensors = collect(_model())
        _SAVED.update(header=header, tensors={k: t.clone() for k, t in tensors.items()})
    return copy.deepcopy(_SAVED["header"]), dict(_SAVED["tensors"])


def _write(path: Path, header: Any, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    save_file(_saved()[1] if tensors is None else tensors, path, {"weightshare": text})
    return path


def _snapshot(module: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor], list[int]]:
    """Structure (repr), every state tensor and the Parameters' identities."""
    state = {k: v.clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}
    return repr(module), state, [id(p) for p in module.parameters()]


def _unchanged(module: torch.nn.Module, before: tuple) -> bool:
    now = _snapshot(module)
    return (
        now[0] == before[0]
        and now[2] == before[2]
        and now[1].keys() == before[1].keys()
        and all(torch.equal(now[1][k], before[1][k]) for k in now[1])
    )


def _refused(
    path: Path,
    match: str = "",
    bound: int | None = PEAK_BOUND,
    model: torch.nn.Module | None = None,
) -> str:
    """Load ``path``: a short ValueError naming the file, memory bounded, nothing changed."""
    model = _model(structured=False) if model is None else model
    before = _snapshot(model)
    if bound is not None:
        tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            ws.load(model, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert bound is None or peak < bound, f"{peak:,} bytes allocated"
    assert len(message) < MESSAGE_BOUND and "\n" not in message, message[:2000]
    assert str(path) in message, message
    assert _unchanged(model, before)
    return message


def _edit(name: str, **fields: Any) -> dict[str, Any]:
    header = _saved()[0]
    header["tensors"][name].update(fields)
    return header


@pytest.mark.req("STORE-14")
def test_a_legit_load_stays_under_the_bounds(tmp_path: Path) -> None:
    # the bounds of the other tests are far above what a correct load takes
    path = _write(tmp_path / "ok.safetensors", _saved()[0])
    fresh = _model(structured=False)
    tracemalloc.start()
    try:
        ws.load(fresh, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND / 8
    x = torch.randn(5, 6)
    saved = _model().eval()
    assert torch.equal(fresh.eval()(x), saved(x))


# ------------------------------------------------------------------------------------------------
# one test per row of issue 20 (rows 1, 7, 10, 11, 12, 13)


@pytest.mark.req("STORE-14")
def test_row1_a_huge_depth_allocates_nothing(tmp_path: Path) -> None:
    # depth 10**6 used to build 10**6 part names (70 MB) before any check; 10**18 never ended
    for depth in (10**6, 10**18, 2**63):
        path = _write(tmp_path / f"d{depth}.safetensors", _edit("3.weight", depth=depth))
        _refused(path, rf"'3.weight': field 'depth' must be in \[1, 2\] .*, got {depth}")


@pytest.mark.req("STORE-13")
def test_row7_a_part_with_another_dtype_is_refused(tmp_path: Path) -> None:
    header, tensors = _saved()
    for key in ("1.weight.values", "2.weight.free", "3.weight.factor1", "4.weight.values"):
        as_int = {**tensors, key: tensors[key].view(torch.int32)}  # the same bytes, I32
        path = _write(tmp_path / f"{key}.safetensors", header, as_int)
        name, part = key.rsplit(".", 1)
        _refused(path, rf"'{name}': part '{part}' is int32 but its description says float32")
    # the description's dtype must be the tensors' (it was ignored)
    path = _write(tmp_path / "h.safetensors", _edit("1.weight", dtype="float16"))
    _refused(path, r"'1.weight': part 'values' is float32 but its description says float16")
    labels = {**tensors, "1.weight.labels": tensors["1.weight.labels"].to(torch.int16)}
    _refused(_write(tmp_path / "l.safetensors", header, labels), "'labels' must be a uint8")
    # a structure for an integer tensor of the model (it failed while being applied)
    header["tensors"]["7.num_batches_tracked"] = {
        "kind": "tied", "shape": [], "dtype": "float32", "num_values": 1, "bits": 0
    }  # fmt: skip
    tied = {k: v for k, v in tensors.items() if k != "7.num_batches_tracked"}
    tied["7.num_batches_tracked.values"] = torch.zeros(1)
    tied["7.num_batches_tracked.labels"] = torch.zeros(0, dtype=torch.uint8)
    path = _write(tmp_path / "int.safetensors", header, tied)
    _refused(path, "'7.num_batches_tracked' is torch.int64 in the model; a tied tensor must be")


@pytest.mark.req("STORE-13")
def test_row10_non_finite_nested_and_misshapen_fields(tmp_path: Path) -> None:
    text = json.dumps(_edit("3.weight", depth=math.inf))
    assert "Infinity" in text
    _refused(_write(tmp_path / "inf.safetensors", text), "Infinity")
    text = json.dumps(_edit("1.weight", num_values=math.nan))
    _refused(_write(tmp_path / "nan.safetensors", text), "NaN")
    big = json.dumps(_edit("1.weight", num_values=0)).replace(
        '"num_values": 0', '"num_values": 1e999'
    )
    _refused(_write(tmp_path / "1e999.safetensors", big), "1e999")
    deep = '{"format_version": 1, "tensors": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(_write(tmp_path / "deep.safetensors", deep), "nested deeper than 32")
    header = _edit("2.weight", kind_kwargs={"chunks": 2, "dim": 99})
    _refused(_write(tmp_path / "dim.safetensors", header), r"'2.weight'.*dim 99")
    for shape in (None, "4x4", [4, None], [4.0, 4], [True, 4]):
        path = _write(tmp_path / "shape.safetensors", _edit("1.bias", shape=shape))
        _refused(path, r"'1.bias': field 'shape' must be a list of ints")


def _depth(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    return 0


_TRICKY = st.text(st.sampled_from('[]{}"\\ \nxé'), max_size=6)
_JSON = st.recursive(
    st.none() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=12,
)


@pytest.mark.req("STORE-13")
@given(value=_JSON, ascii_only=st.booleans())
def test_nesting_is_measured_on_the_text(value: Any, ascii_only: bool) -> None:
    # brackets, quotes and backslashes inside strings do not count; the scan is the parser's
    from weightshare._file_checks import nesting

    assert nesting(json.dumps(value, ensure_ascii=ascii_only)) == _depth(value)


def _cli(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = storage_main([str(path)])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.req("STORE-16")
def test_row11_the_storage_command_prints_one_line(tmp_path: Path) -> None:
    header, tensors = _saved()
    one = torch.ones(1)
    files = {
        "undescribed": _write(tmp_path / "u.safetensors", header, {**tensors, "9.x": one}),
        "no description": _write(tmp_path / "m.safetensors", header, {"7.extra": one} | {
            k: v for k, v in tensors.items() if k[0] != "7"}),
        "null shape": _write(tmp_path / "n.safetensors", _edit("1.bias", shape=None)),
        "string shape": _write(tmp_path / "s.safetensors", _edit("1.bias", shape="4")),
        "deep": _write(tmp_path / "d.safetensors", '{"tensors": ' + "{" * 50_000 + "}" * 50_000),
        "huge depth": _write(tmp_path / "h.safetensors", _edit("3.weight", depth=10**18)),
    }  # fmt: skip
    del header["tensors"]["1.bias"]
    files["missing description"] = _write(tmp_path / "md.safetensors", header)
    for what, path in files.items():
        code, out, err = _cli(path)
        assert code == 1 and out == "", what
        assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err, (what, err)
    # the installed command, end to end
    run = subprocess.run(
        [sys.executable, "-m", "weightshare", "storage", str(files["deep"])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1


@pytest.mark.req("STORE-13")
def test_row12_fields_have_strict_types(tmp_path: Path) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("3.weight", {"depth": 2.9}, "field 'depth' must be an int, got float 2.9"),
        ("3.weight", {"depth": "2"}, "field 'depth' must be an int, got str"),
        ("3.weight", {"depth": True}, "field 'depth' must be an int, got bool"),
        ("1.weight", {"num_values": "3"}, "field 'num_values' must be an int, got str"),
        ("1.weight", {"num_values": 3.7}, "field 'num_values' must be an int, got float"),
        ("1.weight", {"num_values": 3.0}, "field 'num_values' must be an int, got float"),
        ("0.weight", {"signed": "false"}, "field 'signed' must be a bool, got str"),
        ("0.weight", {"signed": 0}, "field 'signed' must be a bool, got int"),
        ("0.weight", {"seed": 2**64}, r"field 'seed' must be in \[0, 2\*\*64\)"),
        ("0.weight", {"hash": "os.system"}, "field 'hash' must be one of"),
        (
            "1.bias",
            {"dtype": "complex128"},
            "part '' is float32 but its description says complex128",
        ),
        ("1.bias", {"dtype": 32}, "field 'dtype' must be a str"),
        ("1.bias", {"kind": "pickle"}, "field 'kind' must be one of"),
        ("1.bias", {"extra": 1}, r"unknown field\(s\) \['extra'\]"),
        ("4.weight", {"layout": "coo"}, "field 'layout' must be one of"),
        ("4.weight", {"nnz": -1}, r"field 'nnz' must be in \[0, 16\]"),
        (
            "5.weight",
            {"hash_kwargs": {"alpha": "0.5"}},
            "field 'hash_kwargs': alpha must be a real",
        ),
        (
            "2.weight",
            {"kind_kwargs": {"chunks": 2.0, "dim": 1}},
            "field 'symmetry' or 'kind_kwargs': chunks must be an int",
        ),
    ]
    for i, (name, fields, match) in enumerate(cases):
        path = _write(tmp_path / f"c{i}.safetensors", _edit(name, **fields))
        _refused(path, f"'{name}': {match}")
    header = _saved()[0]
    del header["tensors"]["0.weight"]["callable"]
    _refused(
        _write(tmp_path / "k.safetensors", header), r"'0.weight': missing field\(s\) \['callable'\]"
    )
    for version, match in [(0, "must be an int >= 1"), (-5, "must be an int >= 1"),
                           (True, "must be an int >= 1"), ("1", "must be an int >= 1"),
                           (3, "format version 3, newer than")]:  # fmt: skip
        header = {**_saved()[0], "format_version": version}
        _refused(_write(tmp_path / "v.safetensors", header), match)
    _refused(_write(tmp_path / "top.safetensors", {**_saved()[0], "x": 1}), r"unknown key\(s\)")
    dup = json.dumps(_saved()[0]).replace(
        '"format_version": 1', '"format_version": 1, "format_version": 1'
    )
    _refused(_write(tmp_path / "dup.safetensors", dup), "repeats the key 'format_version'")


@pytest.mark.req("STORE-15")
def test_row13_errors_stay_short_for_huge_inputs(tmp_path: Path) -> None:
    header, tensors = _saved()
    ghost = '{"kind": "dense", "shape": [1], "dtype": "float32"}'
    many = ", ".join(f'"ghost{i}": {ghost}' for i in range(300_000))
    path = _write(tmp_path / "many.safetensors", json.dumps(header)[:-2] + ", " + many + "}}")
    _refused(path, "'ghost0'", bound=None)  # parsing is linear in the file (too slow traced)
    # consistent in itself, but 300 tensors the model does not have: 5 named, then a count
    extra = {f"x{i:03d}": torch.zeros(1) for i in range(300)}
    ghosts = {k: {"kind": "dense", "shape": [1], "dtype": "float32"} for k in extra}
    header["tensors"].update(ghosts)
    path = _write(tmp_path / "extra.safetensors", header, {**tensors, **extra})
    message = _refused(path, r"\['x000', 'x001', 'x002', 'x003', 'x004', \.\.\. and 295 more\]")
    assert "x005" not in message
    # a 1 MB name is shortened
    name = "n" * 1_000_000
    header, _ = _saved()
    header["tensors"][name] = ghosts["x000"]
    path = _write(tmp_path / "long.safetensors", header, {**tensors, name: torch.zeros(1)})
    _refused(path, "n'[.][.][.]")
    # undescribed tensors, listed the same way
    header, _ = _saved()
    path = _write(tmp_path / "undescribed.safetensors", header, {**tensors, **extra})
    _refused(path, r"\['x000', .* and 295 more\] belong to no description")


@pytest.mark.req("STORE-17")
def test_a_file_cannot_name_code(tmp_path: Path) -> None:
    # a hash is one of the named ones; a callable hash comes back as its saved table, never run
    for hash_ in ("os.system", "builtins.eval", "__import__"):
        _refused(_write(tmp_path / "h.safetensors", _edit("0.weight", hash=hash_)), "'hash'")
    table = torch.arange(24).reshape(4, 6) % 5
    layer = wnn.HashedLinear(6, 4, 5, hash=lambda shape, k, *, seed, device: table)
    path = tmp_path / "c.safetensors"
    ws.save(layer, path)
    loaded = ws.load(torch.nn.Linear(6, 4), path)
    assert torch.equal(loaded.parametrizations.weight[0].index, table.int())
    # no pickle anywhere: the file is safetensors' JSON and raw bytes
    assert b"\x80\x04" not in path.read_bytes()[:16]


# ------------------------------------------------------------------------------------------------
# the property: hostile metadata


def _deep(n: int) -> str:
    return "[" * n + "]" * n


#: values an attacker may put in any field (``("deep", n)`` is replaced by n nested lists)
_HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 20),
    st.sampled_from([10**18, 2**62, 2**63, 2**64, -(2**63), 10**30, 10**50]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2.0, 2.9, 0.5]),
    st.sampled_from(["", "3", "false", "true", "complex128", "int32", "float16", "dense", "tied",
                     "uniform", "dense", "csr", "bitmap", "chunk", "eigen", "symmetric+channel"]),
    st.lists(st.integers(-2, 6), max_size=4),
    st.dictionaries(st.sampled_from(["alpha", "radius", "chunks", "dim", "rank", "x"]),
                    st.one_of(st.integers(-2, 6), st.floats(), st.none()), max_size=2),
    st.tuples(st.just("deep"), st.sampled_from([20, 40, 5000])),
)  # fmt: skip


@st.composite
def _mutations(draw: st.DrawFn) -> tuple[str, list[tuple]]:
    """A JSON text of the saved header with 0-3 hostile edits, and the edits."""
    header, _ = _saved()
    metas = header["tensors"]
    edits: list[tuple] = []
    deep: list[int] = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):  # 0: the saved header, which loads
        what = draw(st.sampled_from(["set", "set", "set", "delete", "add", "top", "element"]))
        name = draw(st.sampled_from(sorted(metas)))
        meta = metas[name]
        value = draw(_HOSTILE)
        if isinstance(value, tuple):
            deep.append(value[1])
            value = f"@@deep{len(deep) - 1}@@"
        if what == "set":
            key = draw(st.sampled_from(sorted(meta)))
            meta[key] = value
        elif what == "delete":
            key = draw(st.sampled_from(sorted(meta)))
            del meta[key]
        elif what == "add":
            key = draw(st.sampled_from(["x", "version", "index", "values", "depth", "dim"]))
            meta.setdefault(key, value)
        elif what == "top":
            key = draw(st.sampled_from(["format_version", "tensors", "x"]))
            header[key] = value
        else:  # one element of a list or dict field
            key = draw(st.sampled_from(["shape", "kind_kwargs", "hash_kwargs"]))
            field = meta.get(key)
            if isinstance(field, list) and field:
                field[draw(st.integers(0, len(field) - 1))] = value
            elif isinstance(field, dict):
                field[draw(st.sampled_from(sorted(field) or ["x"]))] = value
        edits.append((what, name, key, value))
    text = json.dumps(header)
    for i, n in enumerate(deep):
        text = text.replace(f'"@@deep{i}@@"', _deep(n))
    return text, edits


def _tensor_edit(tensors: dict[str, torch.Tensor], edit: str, key: str) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    t = out[key]
    if edit == "drop":
        del out[key]
    elif edit == "truncate":
        out[key] = t.reshape(-1)[:-1].clone() if t.numel() else torch.zeros(1, dtype=t.dtype)
    elif edit == "int32" and t.element_size() == 4:
        out[key] = t.view(torch.int32)
    elif edit == "half":
        out[key] = t.half() if t.is_floating_point() else t.float()
    elif edit == "extra":
        out[key + ".x"] = torch.zeros(2)
    return out


def _load_or_refuse(path: Path, fresh: torch.nn.Module) -> bool:
    """Load ``path`` into ``fresh``: True when it loaded, False on a clean refusal."""
    before = _snapshot(fresh)
    tracemalloc.start()
    try:
        ws.load(fresh, path)
        loaded = True
    except ValueError as err:
        message = str(err)
        assert len(message) < MESSAGE_BOUND and "\n" not in message, message[:2000]
        assert str(path) in message, message
        assert _unchanged(fresh, before)
        loaded = False
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"{peak:,} bytes allocated"
    return loaded


@pytest.mark.req("STORE-7", "STORE-13", "STORE-14", "STORE-15", "STORE-16")
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(mutated=None, tensor_edit=None, structured=False)  # the saved file: a correct load
@example(mutated=None, tensor_edit=("int32", 2), structured=True)  # row 7
@given(
    mutated=st.one_of(st.none(), _mutations()),
    tensor_edit=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["drop", "truncate", "int32", "half", "extra"]), st.integers(0, 99)
        ),
    ),
    structured=st.booleans(),
)
def test_hostile_metadata_is_refused_or_loaded_correctly(
    tmp_path: Path,
    mutated: tuple[str, list[tuple]] | None,
    tensor_edit: tuple[str, int] | None,
    structured: bool,
) -> None:
    from weightshare._serialize import collect

    header, tensors = _saved()
    text = json.dumps(header) if mutated is None else mutated[0]
    if tensor_edit is not None:
        keys = sorted(tensors)
        tensors = _tensor_edit(tensors, tensor_edit[0], keys[tensor_edit[1] % len(keys)])
    path = _write(tmp_path / "hostile.safetensors", text, tensors)
    fresh = _model(structured=structured)
    loaded = _load_or_refuse(path, fresh)
    event("loaded" if loaded else "refused")
    if loaded:
        # a correct load: the model now holds exactly what the file describes
        header, again = collect(fresh)
        assert header == json.loads(text)
        assert again.keys() == tensors.keys()
        assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    # the table and the command read the same file: a table or one line of error
    try:
        ws.storage(path)
    except ValueError as err:
        assert len(str(err)) < MESSAGE_BOUND and "\n" not in str(err)
    code, _, err_text = _cli(path)
    assert code in (0, 1) and (
        code == 0 or (err_text.startswith("error: ") and err_text.count("\n") == 1)
    )


# ------------------------------------------------------------------------------------------------
# entropy-coded parts (STORE-27)

#: 6 values, one of them dominant: coded labels and gaps are smaller than fixed-width ones
_PEAKED = torch.tensor([0.8, 0.1, 0.05, 0.03, 0.01, 0.01])


def _coded_model(structured: bool = True) -> torch.nn.Sequential:
    """A sparse-tied layer (6 % non-zeros) with coded gaps and labels, a tied one with coded labels
    (K = 6, so a 3-bit symbol can say 6 or 7)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(100, 100))
    if structured:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            labels = torch.multinomial(_PEAKED, 256 * 256, replacement=True, generator=g)
            mask = torch.rand(256 * 256, generator=g) < 0.06
            m[0].weight.copy_(((labels + 1).float() * mask).reshape(256, 256))
            labels = torch.multinomial(_PEAKED, 100 * 100, replacement=True, generator=g)
            m[1].weight.copy_(labels.float().reshape(100, 100))
        ws.compress(m[0])
        ws.tie(m[1])
    return m


_CODED: dict[str, Any] = {}


def _coded_saved() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not _CODED:
        from weightshare._serialize import collect

        header, tensors = collect(_coded_model())
        assert header["tensors"]["0.weight"]["coding"].keys() == {"labels", "gaps"}
        assert header["tensors"]["1.weight"]["coding"].keys() == {"labels"}
        _CODED.update(header=header, tensors={k: t.clone() for k, t in tensors.items()})
    return copy.deepcopy(_CODED["header"]), dict(_CODED["tensors"])


def _recode(
    header: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, stream: str, values: Any
) -> None:
    """Replace a coded stream by the code of ``values`` (a valid stream of other values)."""
    meta = header["tensors"][name]
    domain = meta["num_values"] if stream == "labels" else math.prod(meta["shape"])
    code, lengths, symbols, offsets = ws.huffman_encode(torch.as_tensor(values), 256)
    meta["coding"][stream] = {"symbols": symbols.numel(), "bytes": code.numel(), "block": 256}
    key = f"{name}.{stream}"
    tensors[f"{key}_code"], tensors[f"{key}_lengths"] = code, lengths.to(torch.uint8)
    tensors[f"{key}_symbols"] = ws.pack_bits(symbols, ws.bit_width(domain))
    tensors[f"{key}_blocks"] = ws.pack_bits(offsets, ws.bit_width(8 * code.numel()))


def _coded_refused(path: Path, match: str) -> str:
    return _refused(path, match, model=_coded_model(structured=False))


@pytest.mark.req("STORE-27")
def test_coded_parts_are_checked_before_use(tmp_path: Path) -> None:
    # the legit file loads and computes what the saved model computes
    header, tensors = _coded_saved()
    fresh = ws.load(
        _coded_model(structured=False), _write(tmp_path / "ok.safetensors", header, tensors)
    )
    x = torch.randn(2, 256)
    saved = _coded_model()
    assert torch.equal(fresh[0](x), saved[0](x)) and torch.equal(fresh[1].weight, saved[1].weight)
    labels = saved[1].parametrizations.weight[0].labels.reshape(-1)
    gaps = (
        torch.diff(saved[0].parametrizations.weight[0].positions.long(), prepend=torch.tensor([-1]))
        - 1
    )
    n = 0

    def case(edit: Any, match: str) -> None:
        nonlocal n
        header, tensors = _coded_saved()
        edit(header, tensors)
        n += 1
        _coded_refused(_write(tmp_path / f"c{n}.safetensors", header, tensors), match)

    def put(key: str, value: torch.Tensor) -> Any:
        return lambda h, t: t.update({key: value})

    code = tensors["1.weight.labels_code"]
    # a truncated stream: its part is shorter than described, or described shorter and undecodable
    case(put("1.weight.labels_code", code[:-1].clone()), r"'1\.weight': part 'labels_code' has")

    def shorter(h: dict, t: dict) -> None:
        desc = h["tensors"]["1.weight"]["coding"]["labels"]
        width, blocks = ws.bit_width(8 * desc["bytes"]), math.ceil(10_000 / 256)
        offsets = ws.unpack_bits(t["1.weight.labels_blocks"], width, blocks)
        desc["bytes"] -= 1
        t["1.weight.labels_code"] = code[:-1].clone()
        t["1.weight.labels_blocks"] = ws.pack_bits(offsets, ws.bit_width(8 * desc["bytes"]))

    case(shorter, r"'1\.weight': coded labels: the last block ends")
    # code lengths that violate Kraft's inequality, or out of [1, 24]
    lengths = tensors["0.weight.gaps_lengths"]
    case(
        put("0.weight.gaps_lengths", torch.ones_like(lengths)), r"'0\.weight': coded gaps: .*Kraft"
    )
    case(put("0.weight.gaps_lengths", lengths + 24), r"coded gaps: the code lengths must be in")
    # block offsets out of order or out of the stream
    desc = header["tensors"]["0.weight"]["coding"]["gaps"]
    width, blocks = (
        ws.bit_width(8 * desc["bytes"]),
        math.ceil(header["tensors"]["0.weight"]["nnz"] / 256),
    )
    offsets = ws.unpack_bits(tensors["0.weight.gaps_blocks"], width, blocks)
    for bad in (0, (1 << width) - 1):
        moved = offsets.clone()
        moved[-1] = bad
        case(put("0.weight.gaps_blocks", ws.pack_bits(moved, width)), r"coded gaps: (the )?block")
    # a stream of one value fewer than described (the count is the shape's)
    case(
        lambda h, t: _recode(h, t, "1.weight", "labels", labels[:-1]),
        "coded labels: the last block",
    )
    # gaps that put the last non-zero past the end of the tensor
    past = gaps.clone()
    past[-1] += 65_536 - int(gaps.add(1).sum()) + 1  # the last position is 65536
    case(lambda h, t: _recode(h, t, "0.weight", "gaps", past), "run past the 65536 entries")
    # a symbol (hence a label) >= K: 3 bits hold 7, K = 6
    symbols = ws.unpack_bits(tensors["1.weight.labels_symbols"], 3, 6)
    symbols[-1] = 7
    case(put("1.weight.labels_symbols", ws.pack_bits(symbols, 3)), r"labels outside \[0, 6\)")

    # descriptions: the coding field and its streams are checked like every field
    def field(**fields: Any) -> Any:
        return lambda h, t: h["tensors"]["1.weight"]["coding"]["labels"].update(fields)

    tied = header["tensors"]["1.weight"]
    edits = [
        (lambda h, t: h.update(format_version=1), r"unknown field\(s\) \['coding'\]"),
        (lambda h, t: h["tensors"]["1.weight"].pop("coding"), r"missing field\(s\) \['coding'\]"),
        (lambda h, t: h["tensors"]["1.weight"]["coding"].update(gaps={}), "unknown stream"),
        (lambda h, t: h["tensors"]["0.weight"].update(layout="csr"), "goes with coded gaps"),
        (
            lambda h, t: h["tensors"]["1.weight"].update(coding={"labels": [1]}),
            "exactly the fields",
        ),
        (field(symbols=7), r"'symbols' must be in \[1, 6\]"),
        (field(bytes=0), "'bytes' must be in"),
        (field(block=True), "'block' must be an int"),
        (field(block=10**30), "'block' must be in"),
        (field(block=tied["coding"]["labels"]["block"] // 2), "part 'labels_blocks' has"),
    ]
    for edit, match in edits:
        case(edit, match)


_STREAM_PARTS = ("code", "lengths", "symbols", "blocks")


def _reference_streams(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The labels and positions of the coded model's file, decoded by the reference (or a
    ValueError)."""
    import numpy as np

    out = {}
    for name, meta in header["tensors"].items():
        for stream, desc in meta.get("coding", {}).items():
            count = meta["nnz"] if meta["kind"] == "sparse" else math.prod(meta["shape"])
            domain = meta["num_values"] if stream == "labels" else math.prod(meta["shape"])
            part = {
                p: tensors[f"{name}.{stream}_{p}"].numpy()
                for p in ("code", "lengths", "symbols", "blocks")
            }
            symbols = ref.unpack_bits(part["symbols"], ref.bit_width(domain), desc["symbols"])
            if (symbols >= domain).any():
                raise ValueError("a symbol outside the domain")
            blocks = -(-count // desc["block"])
            offsets = ref.unpack_bits(part["blocks"], ref.bit_width(8 * desc["bytes"]), blocks)
            values = ref.huffman_decode(
                part["code"], part["lengths"], symbols, offsets, count, desc["block"]
            )
            if stream == "gaps":
                values = np.cumsum(values + 1) - 1
                if values[-1] >= domain:
                    raise ValueError("past the end")
            out[f"{name}.{stream}"] = values
    return out


@pytest.mark.req("STORE-27")
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    part=st.sampled_from(["0.weight.gaps", "0.weight.labels", "1.weight.labels"]),
    kind=st.sampled_from(_STREAM_PARTS),
    index=st.integers(0, 1 << 20),
    value=st.integers(0, 255),
)
def test_damaged_coded_parts_are_refused_or_decoded_as_the_reference_does(
    tmp_path: Path, part: str, kind: str, index: int, value: int
) -> None:
    header, tensors = _coded_saved()
    key = f"{part}_{kind}"
    damaged = tensors[key].clone()
    damaged[index % damaged.numel()] = value
    tensors[key] = damaged
    path = _write(tmp_path / "damaged.safetensors", header, tensors)
    try:
        expected = _reference_streams(header, tensors)
    except ValueError:
        event("refused")
        _coded_refused(path, "coded")
        return
    event("loaded")
    fresh = ws.load(_coded_model(structured=False), path)
    sparse, tied = fresh[0].parametrizations.weight[0], fresh[1].parametrizations.weight[0]
    assert (sparse.positions.long().numpy() == expected["0.weight.gaps"]).all()
    assert (sparse.labels.long().numpy() == expected["0.weight.labels"]).all()
    assert (tied.labels.reshape(-1).long().numpy() == expected["1.weight.labels"]).all()
