"""Small models shared by the experiments, plus the official WSR torus models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

LinearFactory = Callable[[int, int, int], nn.Module]  # (layer index, in, out) -> module


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` blocks and a linear classifier; layers are ``fc1..fcL``."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int = 10,
        linear: LinearFactory | None = None,
    ) -> None:
        super().__init__()
        make = linear or (lambda _i, n_in, n_out: nn.Linear(n_in, n_out))
        sizes = [in_features, *hidden, num_classes]
        self.depth = len(sizes) - 1
        for i in range(self.depth):
            setattr(self, f"fc{i + 1}", make(i, sizes[i], sizes[i + 1]))

    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"fc{i + 1}") for i in range(self.depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        *body, head = self.layers()
        for layer in body:
            x = torch.relu(layer(x))
        return head(x)


class LocalCNN(nn.Module):
    """The CNN twin of ``MLP(H*W*C, [channels*H*W])``: a 3x3 'same' conv replaces ``fc1``.

    ``conv1`` (1 -> ``channels``, 3x3, zero padding) is exactly a first layer with ``channels*H*W``
    hidden units whose weights are local and shared across positions; the rest (ReLU, flatten,
    ``fc2``) is the MLP's. So the two models differ only in the first layer's structure.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], channels: int, num_classes: int = 10
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.conv1 = nn.Conv2d(c, channels, 3, padding=1)
        self.fc2 = nn.Linear(channels * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.conv1(x)).flatten(1))


class SmallCNN(nn.Module):
    """Two or more 3x3 convs (first ``in -> c``, then square ``c -> c``), max-pool, linear head."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: int,
        num_convs: int = 3,
        classes: int = 10,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.convs = nn.ModuleList(
            [nn.Conv2d(c if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs)]
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(channels * (h // 2) * (w // 2), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i == 0:
                x = self.pool(x)
        return self.head(x.flatten(1))


class Net2FC(nn.Module):
    """The official WSR torus FC net: ``P -> P*a1 -> P*a2``, BN+ReLU+Dropout, mean over P, linear.

    ``P = side*side`` positions. A circulant pattern in ``fc1``/``fc2`` makes it :class:`Net2CNN`.
    """

    def __init__(self, side: int, alpha1: int, alpha2: int, dropout: float = 0.4) -> None:
        super().__init__()
        p = side * side
        self.positions, self.alpha2 = p, alpha2
        self.fc1 = nn.Linear(p, p * alpha1)
        self.bn1 = nn.BatchNorm1d(p * alpha1)
        self.fc2 = nn.Linear(p * alpha1, p * alpha2)
        self.bn2 = nn.BatchNorm1d(p * alpha2)
        self.drop = nn.Dropout(dropout)
        self.fc3 = nn.Linear(alpha2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn1(self.fc1(x.flatten(1)))))
        x = self.drop(torch.relu(self.bn2(self.fc2(x))))
        return self.fc3(x.view(-1, self.alpha2, self.positions).mean(-1))


class Net2CNN(nn.Module):
    """The official WSR torus CNN: two circular 3x3 convs with BN+ReLU, global mean pool, linear."""

    def __init__(self, alpha1: int, alpha2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, alpha1, 3, padding=1, padding_mode="circular")
        self.bn1 = nn.BatchNorm2d(alpha1)
        self.conv2 = nn.Conv2d(alpha1, alpha2, 3, padding=1, padding_mode="circular")
        self.bn2 = nn.BatchNorm2d(alpha2)
        self.fc3 = nn.Linear(alpha2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc3(x.mean(dim=(-2, -1)))


class SFC(nn.Module):
    """Neyshabur (2020) S-FC: ``3072 -> 256*ch -> 24*ch -> 10`` with BN+ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3 * 32 * 32, 256 * ch)
        self.body = nn.Sequential(
            nn.BatchNorm1d(256 * ch),
            nn.ReLU(),
            nn.Linear(256 * ch, 24 * ch),
            nn.BatchNorm1d(24 * ch),
            nn.ReLU(),
            nn.Linear(24 * ch, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc1(x.flatten(1)))


class SConv(nn.Module):
    """Neyshabur (2020) S-Conv: 9x9 stride-2 conv (ch) + BN+ReLU, then S-FC's head."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 9, stride=2, padding=4)
        self.body = nn.Sequential(
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 16 * ch, 24 * ch),
            nn.BatchNorm1d(24 * ch),
            nn.ReLU(),
            nn.Linear(24 * ch, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv1(x))


class ResMLP1D(nn.Module):
    """The MNIST-1D reference MLP: ``h = relu(fc1 x)``, ``h = h + relu(fc2 h)``, ``fc3 h``."""

    def __init__(self, in_features: int = 40, hidden: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        h = h + torch.relu(self.fc2(h))
        return self.fc3(h)


class CNN1D(nn.Module):
    """The MNIST-1D reference CNN: three Conv1d (kernels 5, 3, 3; stride 2; padding 1), a linear
    classifier on the flattened ``channels * 5`` features (for signals of length 40)."""

    def __init__(self, length: int = 40, channels: int = 25, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        n = length
        for k in (5, 3, 3):
            n = (n + 2 - k) // 2 + 1
        self.fc = nn.Linear(channels * n, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(len(x), 1, -1)
        for conv in (self.conv1, self.conv2, self.conv3):
            h = torch.relu(conv(h))
        return self.fc(h.flatten(1))


def conv1d_as_matrix(conv: nn.Conv1d, length: int) -> torch.Tensor:
    """The dense matrix ``(C_out*L', C*L)`` of a 1-D conv layer (bias excluded), by probing."""
    c = conv.in_channels
    eye = torch.eye(c * length, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out = conv._conv_forward(eye.view(-1, c, length), conv.weight, None)
    return out.flatten(1).T.contiguous()


def conv_as_matrix(conv: nn.Conv2d, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """The dense matrix ``(C_out*H'*W', C*H*W)`` of a conv layer (bias excluded), by probing.

    Row ``o*H'*W' + p`` holds the weights output unit (channel o, position p) applies to the
    flattened input image, exactly what the first layer of the FC twin would learn.
    """
    c, h, w = image_shape
    eye = torch.eye(c * h * w, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out = conv._conv_forward(eye.view(-1, c, h, w), conv.weight, None)
    return out.flatten(1).T.contiguous()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the free ones: parametrisations store only what is trained)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
