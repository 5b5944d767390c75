"""NaN/inf screening of CUDA tensors without a host synchronization (the attach step).

A synchronous check reads a count from the device, which stalls the queue and forbids CUDA graph
capture. Here each check is one fused reduction (the max-abs of every tensor: inf or NaN exactly
when the tensor holds one), copied into pinned host memory without blocking; an event marks when
the copy has landed. A later call raises ``ValueError`` for every finished check that found a bad
tensor, without ever waiting; ``poll(wait=True)`` waits and raises (spec TRAIN-20).
"""

from __future__ import annotations

import torch


class DeferredCheck:
    """Screens CUDA tensors for NaN/inf asynchronously; errors surface at a later call."""

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, torch.cuda.Event, list[str], int]] = []
        self._submitted = 0

    def submit(self, tensors: list[torch.Tensor], names: list[str]) -> None:
        """Raise for any earlier finished check that failed, then queue one for ``tensors``."""
        self.poll()
        if not tensors:
            return
        self._submitted += 1
        peaks = torch._foreach_norm(tensors, float("inf"))  # one launch per device and dtype
        bad = ~torch.isfinite(torch.stack([p.float() for p in peaks]))
        host = torch.empty(bad.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(bad, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((host, done, names, self._submitted))

    def poll(self, wait: bool = False) -> None:
        """Raise ``ValueError`` for the oldest finished check that found NaN/inf (``wait``: all)."""
        while self._pending:
            host, done, names, number = self._pending[0]
            if wait:
                done.synchronize()
            elif not done.query():
                return
            self._pending.pop(0)
            found = [name for name, b in zip(names, host.tolist(), strict=True) if b]
            if found:
                self._pending.clear()
                raise ValueError(
                    f"{', '.join(found)} had non-finite value(s) (NaN or inf) at attached prox "
                    f"step {number} (found asynchronously on CUDA; the weights of that step are "
                    "already written)"
                )
