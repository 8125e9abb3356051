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
