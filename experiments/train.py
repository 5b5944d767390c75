"""One training loop for every experiment: minibatch SGD with a cosine schedule, seeded batches."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ._common import seed_everything
from .data import Split


@dataclass(frozen=True)
class TrainConfig:
    """SGD hyper-parameters; the cosine schedule runs over ``epochs`` and is stepped per epoch."""

    epochs: int
    lr: float
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


OptimizerFactory = Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]
Hook = Callable[[torch.optim.Optimizer], Any]


def sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] (the model is put in eval mode)."""
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(y), batch)
    )
    return correct / max(len(y), 1)


@dataclass(frozen=True)
class StepConfig:
    """The MNIST-1D reference training: Adam at a constant learning rate for ``steps`` minibatches
    taken in order from the training set (wrapping around), no schedule."""

    steps: int
    lr: float = 1e-2
    batch_size: int = 100
    weight_decay: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def adam(model: nn.Module, cfg: StepConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit_steps(
    model: nn.Module,
    data: Split,
    cfg: StepConfig,
    *,
    seed: int,
    optimizer: Callable[[nn.Module, StepConfig], torch.optim.Optimizer] = adam,
    hook: Hook | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place as the MNIST-1D notebooks do; same result keys as :func:`fit`.

    Batch ``t`` is ``x_train[(t * B) % N : (t * B) % N + B]``, so the order is fixed and ``seed``
    only matters to the caller's initialisation (and to anything random in the model).
    """
    seed_everything(seed)
    opt = optimizer(model, cfg)
    handle = hook(opt) if hook is not None else None
    loss_fn = nn.CrossEntropyLoss()
    n, b = len(data.y_train), cfg.batch_size
    start, losses, diverged = time.perf_counter(), [], False
    model.train()
    for step in range(cfg.steps):
        i = (step * b) % n
        loss = loss_fn(model(data.x_train[i : i + b]), data.y_train[i : i + b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            diverged = True
            break
    seconds = time.perf_counter() - start
    del handle
    tail = losses[-max(1, n // b) :]
    return {
        "train_loss": sum(tail) / len(tail),
        "diverged": diverged,
        "train_acc": accuracy(model, data.x_train, data.y_train),
        "val_acc": accuracy(model, data.x_val, data.y_val),
        "test_acc": accuracy(model, data.x_test, data.y_test),
        "seconds": round(seconds, 3),
    }


def fit(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    *,
    seed: int,
    optimizer: OptimizerFactory = sgd,
    hook: Hook | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.x_train``; return accuracies and timings.

    ``seed`` fixes the batch order (the model is built by the caller, after its own seeding).
    ``hook(optimizer)`` runs once after the optimizer exists, e.g. to ``weightshare.attach`` a
    prox step; its return value is kept alive for the duration of training.
    """
    gen = seed_everything(seed)
    opt = optimizer(model, cfg)
    handle = hook(opt) if hook is not None else None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    start, last_loss, diverged = time.perf_counter(), math.nan, False
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(data.x_train.device)
        total, count = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        sched.step()
        last_loss = total / count
        if not math.isfinite(last_loss):
            diverged = True
            break
    seconds = time.perf_counter() - start
    del handle
    return {
        "train_loss": last_loss,
        "diverged": diverged,
        "train_acc": accuracy(model, data.x_train, data.y_train),
        "val_acc": accuracy(model, data.x_val, data.y_val),
        "test_acc": accuracy(model, data.x_test, data.y_test),
        "seconds": round(seconds, 3),
    }
