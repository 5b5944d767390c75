"""Compile every Triton kernel variant for a GPU target, without a GPU (ahead of time).

The interpreter runs the kernels' Python; this runs Triton's real compiler (to PTX and, with
``ptxas`` from the Triton wheel, a cubin) for an sm_90 target (H100/H200), which catches what the
interpreter cannot: constructs the compiler rejects, type errors in loops, bad casts.
``python -m conformance._triton_aot`` (without ``TRITON_INTERPRET``) prints one line per variant.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

TARGET = ("cuda", 90, 32)


def variants() -> list[tuple[Any, dict[str, str], dict[str, object]]]:
    """(kernel, signature of the runtime arguments, constexprs) for every variant the op uses."""
    from weightshare._isotonic import triton_hull as th

    t = th.TUNING
    shape = dict(T=t.tile, K=t.width)
    tile = dict(G=t.group, CH=min(t.tile, max(t.group, th._PAIRS // t.group)),
                KP=1 << (t.width - 1).bit_length(), LOG_G=(t.group - 1).bit_length(),
                LOG_K=(t.width - 1).bit_length(), TLEV=th.tile_levels(t))  # fmt: skip
    out: list[tuple[Any, dict[str, str], dict[str, object]]] = []
    ints = dict(n="i32", NT="i32", lam_stride="i32", log_w="i32")
    links = dict(last_ptr="*i32", nxt_ptr="*i32")
    for x, ramp, ragged in (("*fp32", True, False), ("*fp64", True, False),
                            ("*fp16", True, False), ("*bf16", True, False),
                            ("*fp32", False, False), ("*fp64", False, False),
                            ("*fp32", True, True), ("*bf16", True, True)):  # fmt: skip
        tables = dict(seg_ptr="*i64", tseg_ptr="*i64") if ragged else {}
        sig = dict(x_ptr=x, lam_ptr="*fp64", shift_ptr="*fp64", loc_ptr="*fp64",
                   tot_ptr="*fp64", scratch_ptr="*i32", seg_ptr="*fp64", tseg_ptr="*fp64",
                   **links, **ints)  # fmt: skip
        sig.update(tables)
        consts = dict(RAMP=ramp, SORTED=ramp, RAGGED=ragged, **shape, **tile)
        out.append((th._tile_kernel, sig, consts))
    for ragged in (False, True):
        table = "*i64" if ragged else "*i32"
        sig = dict(loc_ptr="*fp64", csum_ptr="*fp64", **links, info_ptr="*i32", ib_ptr=table,
                   seg_ptr=table, node_ptr=table, n="i32", NT="i32", B="i32", nodes="i32",
                   size="i64", steps="i32", nlev="i32", out_base="i64")  # fmt: skip
        out.append((th._merge_kernel, sig, dict(**shape, KP=tile["KP"], RAGGED=ragged)))
    outs = (("*fp32", 0), ("*fp64", 0), ("*fp16", 1), ("*i16", 2))
    for (dst, kind), perm, ragged in itertools.product(outs, (True, False), (False, True)):
        if ragged and not perm:
            continue  # the ragged pass always unsorts
        table = "*i64" if ragged else "*i32"
        sig = dict(loc_ptr="*fp64", csum_ptr="*fp64", **links, info_ptr="*i32", ib_ptr=table,
                   seg_ptr=table, ids_ptr=table, shift_ptr="*fp64",
                   perm_ptr="*i64" if perm else "*fp64", out_ptr=dst, z_ptr="*fp64",
                   total="i64", n="i32", NT="i32", B="i32", nlev="i32")  # fmt: skip
        consts = dict(**shape, PERM=perm, WRITE_Z=perm and not ragged, OUT_KIND=kind,
                      RAGGED=ragged, BLOCK=th._BLOCK)  # fmt: skip
        out.append((th._slopes_kernel, sig, consts))
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget(*TARGET)
    for kernel, sig, consts in variants():
        names = kernel.arg_names
        signature = {name: sig.get(name, "constexpr") for name in names}
        src = ASTSource(kernel, signature, {(names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=target)
        assert compiled.asm.get("cubin"), kernel.fn.__name__
        print(f"{kernel.fn.__name__} {consts}: sm_{TARGET[1]} ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
