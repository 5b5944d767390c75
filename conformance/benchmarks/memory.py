"""Peak extra memory of one prox (or kernel) call, measured in a fresh subprocess.

Method: the child process imports torch, builds the input, warms the call up on a small input,
resets its resident-set high-water mark (``/proc/self/clear_refs``), records its resident set size
just before the call and the high-water mark (``VmHWM`` in ``/proc/self/status``) just after it.
The difference is the peak extra physical memory of the call (all temporaries and the output;
untouched reservations do not count). It is reported as a multiple of the input's bytes. Linux
only. (``getrusage``'s ``ru_maxrss`` is not used: Linux carries it over from the parent across
fork and exec, so a child of a large benchmark process would report the parent's peak.)

``python -m conformance.benchmarks.memory METHOD D DTYPE [--kernel]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident-set high-water mark (Linux >= 4.0)


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(method: str, d: int, dtype_name: str, kernel: bool) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    if kernel:
        from weightshare import _isotonic

        fn = _isotonic.kernel(method)
        y = torch.randn(1, d, dtype=dtype)

        def call(x):  # type: ignore[no-untyped-def]
            return fn(x)

        call(torch.randn(1, 1000, dtype=dtype))
    else:
        import weightshare

        y = torch.randn(d, dtype=dtype)

        def call(x):  # type: ignore[no-untyped-def]
            return weightshare.prox(x, 1.0, method=method)

        call(torch.randn(1000, dtype=dtype))
    _reset_peak()
    before = _rss_bytes()
    out = call(y)
    peak = _peak_bytes()
    del out
    return {
        "method": method,
        "d": d,
        "dtype": dtype_name,
        "input_bytes": y.nbytes,
        "extra_bytes": peak - before,
        "ratio": (peak - before) / y.nbytes,
    }


def measure(method: str, d: int, dtype: str = "float32", kernel: bool = False) -> dict:
    """Run the measurement in a fresh interpreter and return its result."""
    cmd = [sys.executable, "-m", "conformance.benchmarks.memory", method, str(d), dtype]
    if kernel:
        cmd.append("--kernel")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("method")
    parser.add_argument("d", type=int)
    parser.add_argument("dtype", choices=["float32", "float64"])
    parser.add_argument("--kernel", action="store_true", help="the isotonic kernel alone")
    args = parser.parse_args(argv)
    print(json.dumps(_child(args.method, args.d, args.dtype, args.kernel)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
