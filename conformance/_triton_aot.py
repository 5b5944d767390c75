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

    out: list[tuple[Any, dict[str, str], dict[str, object]]] = []
    for x, sorted_pad in (("*fp32", True), ("*fp64", True), ("*fp16", True), ("*bf16", True),
                          ("*fp32", False), ("*fp64", False)):  # fmt: skip
        sig = dict(x_ptr=x, lam_ptr="*fp64", shift_ptr="*fp64", pad_ptr=x, z_ptr="*fp64",
                   total="i64", n="i32", width="i32", lam_stride="i32")  # fmt: skip
        out.append((th._prepare_kernel, sig, dict(RAMP=sorted_pad, SORTED_PAD=sorted_pad)))
    links = dict(last_ptr="*i32", nxt_ptr="*i32")
    for identity in (True, False):
        sig = dict(s_ptr="*fp64", **links, a_out="*i32", c_out="*i32", total="i64",
                   blocks="i32", width="i32", h="i32", hc="i32", steps="i32")  # fmt: skip
        out.append((th._bridge_kernel, sig, dict(IDENTITY=identity)))
        sig = dict(**links, a_ptr="*i32", c_ptr="*i32", total="i64", blocks="i32", width="i32",
                   span="i32")  # fmt: skip
        out.append((th._splice_kernel, sig, dict(FIRST=identity)))
    outs = (("*fp32", 0), ("*fp64", 0), ("*fp16", 1), ("*i16", 2))
    for (dst, kind), identity, perm in itertools.product(outs, (True, False), (True, False)):
        sig = dict(s_ptr="*fp64", **links, a_final_ptr="*i32", shift_ptr="*fp64",
                   perm_ptr="*i64" if perm else "*i32", out_ptr=dst, z_ptr="*fp64",
                   total="i64", n="i32", width="i32")  # fmt: skip
        consts = dict(IDENTITY=identity, PERM=perm, WRITE_Z=perm, OUT_KIND=kind)
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
        block = 128 if kernel.fn.__name__ == "_bridge_kernel" else 1024
        consts = {**consts, "BLOCK": block}
        signature = {name: sig.get(name, "constexpr") for name in names}
        src = ASTSource(kernel, signature, {(names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=target)
        assert compiled.asm.get("cubin"), kernel.fn.__name__
        print(f"{kernel.fn.__name__} {consts}: sm_{TARGET[1]} ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
