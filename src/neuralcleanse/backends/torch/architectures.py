"""Reference PyTorch architectures used by the demo, tests and benchmarks.

They can also be named on the command line
(``--arch neuralcleanse.backends.torch.architectures:mnist_badnet``) to load a matching state dict.
"""

from __future__ import annotations

import torch
from torch import nn


class MnistBadNet(nn.Module):
    """The layout of the public ``badnet-MNIST.pth`` model; returns probabilities.

    Input ``(N, 1, 28, 28)`` after the preprocessing ``(p / 255 - 0.5) / 0.5``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.AvgPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5), nn.ReLU(), nn.AvgPool2d(2))
        self.fc1 = nn.Sequential(nn.Linear(512, 512), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(512, 10), nn.Softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a batch."""
        x = self.conv2(self.conv1(x))
        return self.fc2(self.fc1(torch.flatten(x, 1)))


def mnist_badnet() -> MnistBadNet:
    """Factory for :class:`MnistBadNet` (for ``--arch``)."""
    return MnistBadNet()


#: The preprocessing of :class:`MnistBadNet` on raw [0, 255] pixels, as ``(subtrahend, divisor)``.
MNIST_BADNET_PREPROCESSING = (127.5, 127.5)


def small_cnn(in_channels: int = 1, nb_classes: int = 10, image_size: int = 8,
              width: int = 16) -> nn.Sequential:
    """A small two-convolution network returning logits, for quick experiments."""
    flat = 2 * width * (image_size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, nb_classes))


def lenet(in_channels: int = 1, nb_classes: int = 10, image_size: int = 16) -> nn.Sequential:
    """A LeNet-5-style network (5x5 convolutions 6 -> 16, max pooling, 120-84 dense), logits.

    Used by the model zoo (``benchmarks/zoo.py``); ``image_size`` must be a multiple of 4.
    """
    flat = 16 * (image_size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, nb_classes))


def vgg_small(in_channels: int = 1, nb_classes: int = 10, image_size: int = 16,
              width: int = 16) -> nn.Sequential:
    """A small VGG-style network: two blocks of two 3x3 convolutions, average-pooled, logits.

    Used by the model zoo (``benchmarks/zoo.py``); ``image_size`` must be a multiple of 4.
    """
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]

    flat = 2 * width * (image_size // 4) ** 2
    return nn.Sequential(*block(in_channels, width), *block(width, 2 * width), nn.Flatten(),
                         nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, nb_classes))


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1, strided) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_small(in_channels: int = 1, nb_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A small ResNet returning logits, used by the model zoo.

    A stem convolution, two residual blocks (the second strided), global average pooling and
    a linear layer.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(), _ResidualBlock(width, width, 1), _ResidualBlock(width, 2 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, nb_classes))
