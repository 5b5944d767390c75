"""ResNet-50 for the GPU check's training benchmark, when torchvision is not importable.

:func:`resnet50` builds torchvision's ResNet-50 architecture (bottleneck blocks 3-4-6-3, stride on
the 3x3 convolution, batch norm, a 1000-way classifier) from plain torch modules: the same 54
weights of ndim >= 2, in the same order. ``divisor`` divides every channel count but the input's,
for the CPU dry run.
"""

from __future__ import annotations

from torch import Tensor, nn

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # planes, blocks, stride
EXPANSION = 4


def bottleneck_plan(divisor: int = 1) -> list[tuple[int, ...]]:
    """The shapes of the 54 conv and linear weights, in ``parameters()`` order."""
    stem = 64 // divisor
    shapes: list[tuple[int, ...]] = [(stem, 3, 7, 7)]
    inplanes = stem
    for planes, blocks, _ in STAGES:
        planes //= divisor
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes, planes, 3, 3)]
            shapes.append((planes * EXPANSION, planes, 1, 1))
            if b == 0:
                shapes.append((planes * EXPANSION, inplanes, 1, 1))  # downsample
            inplanes = planes * EXPANSION
    shapes.append((1000, inplanes))
    return shapes


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet50(divisor: int = 1) -> nn.Module:
    """ResNet-50 with every channel count divided by ``divisor`` (1: the real one)."""
    stem = 64 // divisor
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, 7, 2, 3, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    inplanes = stem
    for planes, blocks, stride in STAGES:
        planes //= divisor
        for b in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
            inplanes = planes * EXPANSION
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, 1000)]
    return nn.Sequential(*layers)
