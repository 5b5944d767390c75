"""GPU training benchmark: what `ws.attach` costs a real training step, and where the time goes.

``python -m conformance.benchmarks.gpu_train --out DIR`` (part of ``make gpu-check``) measures, on
one CUDA device and in one run (medians of CUDA-event intervals after warm-up):

* a ResNet-50 training step (torchvision's when importable, else :mod:`resnet`'s, the same 54
  weights), batch 128 at 224x224, bf16 autocast, channels_last, SGD with momentum: without, then
  with ``ws.attach(opt, lam)`` on every weight with ndim >= 2;
* ``ws.prox_many`` of those 54 weights against one ``torch.sort`` of their concatenation and
  against sorting each;
* ``HashedLinear(4096, 4096, num_buckets=2**20)`` forward + backward against ``nn.Linear``.

Records go to ``gpu_train.json`` as they are measured; ``gpu_tables.render_train`` makes the
table. ``--dry-run`` runs it all on the CPU at tiny sizes (a ResNet-50 with 1/32 of the channels,
batch 2 at 32x32): it proves the code path, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from conformance.benchmarks import gpu_tables
from conformance.benchmarks.resnet import resnet50
from conformance.benchmarks.timing import Recorder, device_ms

LAM = 1e-4


@dataclass(frozen=True)
class Setting:
    device: str
    batch: int
    image: int
    divisor: int
    hashed: tuple[int, int, int]  # in, out, buckets
    budget_s: float
    max_reps: int


GPU = Setting("cuda", 128, 224, 1, (4096, 4096, 2**20), 2.0, 30)
DRY_RUN = Setting("cpu", 2, 32, 32, (64, 64, 2**10), 0.0, 1)


def model_for(setting: Setting) -> tuple[nn.Module, str]:
    """torchvision's ResNet-50 when importable at full width, else the plain-torch one."""
    if setting.divisor == 1:
        try:
            from torchvision.models import resnet50 as tv_resnet50
        except ImportError:
            pass
        else:
            return tv_resnet50(), "ResNet-50 (torchvision)"
    name = "ResNet-50 (plain torch)" if setting.divisor == 1 else f"ResNet-50 / {setting.divisor}"
    return resnet50(setting.divisor), name


def _autocast(device: str) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(device, dtype=torch.bfloat16)


def training_step(setting: Setting) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    model, _ = model_for(setting)
    model = model.to(setting.device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(setting.batch, 3, setting.image, setting.image, device=setting.device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (setting.batch,), device=setting.device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(setting.device):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return model, opt, step


@contextlib.contextmanager
def attached(opt: torch.optim.Optimizer) -> Iterator[object]:
    import weightshare as ws

    handle = ws.attach(opt, lam=LAM)
    try:
        yield handle
    finally:
        handle.remove()


def _prox_many(
    weights: list[torch.Tensor],
    ms: Callable[[Callable[[], object]], float],
    record: Callable[[str, float], None],
) -> None:
    """``prox_many`` of copies of the weights against one sort of their concatenation and
    against sorting each."""
    import weightshare as ws

    with torch.no_grad():
        data = [p.detach().float().clone() for p in weights]
        flat = torch.cat([w.reshape(-1) for w in data])
        record("sort concat", ms(lambda: torch.sort(flat)))
        record("sort each", ms(lambda: [torch.sort(w.reshape(-1)) for w in data]))
        record("prox_many", ms(lambda: ws.prox_many(data, LAM)))


def run(setting: Setting, recorder: Recorder) -> None:
    import weightshare as ws

    def ms(fn: Callable[[], object]) -> float:
        return device_ms(fn, setting.device, setting.budget_s, setting.max_reps)

    def record(what: str, value: float) -> None:
        recorder.add({"what": what, "ms": value})
        print(f"{what:>12}: {value:9.3f} ms", flush=True)

    model, opt, step = training_step(setting)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    values = sum(p.numel() for p in weights)
    inn, out, buckets = setting.hashed
    recorder.add({
        "what": "setting", "model": model_for(setting)[1], "batch": setting.batch,
        "image": setting.image, "precision": "bf16 autocast, channels_last",
        "attached": len(weights), "values": values,
        "hashed": f"HashedLinear({inn}, {out}, num_buckets={buckets})",
    })  # fmt: skip
    record("step", ms(step))
    with attached(opt):
        record("step attach", ms(step))
    _prox_many(weights, ms, record)
    del model, opt, weights
    hashed = ws.nn.HashedLinear(inn, out, num_buckets=buckets).to(setting.device)
    dense = nn.Linear(inn, out).to(setting.device)
    batch = torch.randn(setting.batch, inn, device=setting.device)

    def fwd_bwd(layer: nn.Module) -> Callable[[], None]:
        def go() -> None:
            layer.zero_grad(set_to_none=True)
            layer(batch).sum().backward()

        return go

    record("linear", ms(fwd_bwd(dense)))
    record("hashed", ms(fwd_bwd(hashed)))
    print(f"attached values: {values:,} (log2 {math.log2(values):.1f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--quick", action="store_true", help="the same as the full run (it is short)"
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (--dry-run runs on the CPU)", file=sys.stderr)
        return 1
    setting = DRY_RUN if args.dry_run else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out / "gpu_train.json", setting.device)
    run(setting, recorder)
    print(gpu_tables.render_train(recorder.meta, recorder.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
