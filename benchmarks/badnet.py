"""The third-party MNIST BadNet and the images the speed benchmarks scan it on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def load_badnet(data: Path) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """``(model, x, y)``: ``badnet-MNIST.pth`` (eval mode, CPU) and the first 1,000 MNIST test
    images with their labels from ``data``; ``None`` when either file is absent."""
    import torch

    from neuralcleanse.backends.torch.architectures import MnistBadNet

    weights, images = data / "badnet-MNIST.pth", data / "mnist_test_first1000.npz"
    if not (weights.is_file() and images.is_file()):
        return None
    model = MnistBadNet()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with np.load(images) as d:
        return model.eval(), d["x"], d["y"]


def scan_kwargs() -> dict[str, Any]:
    """What ``nc.scan`` must be told about the model: probabilities, and its normalisation."""
    from neuralcleanse.backends.torch.architectures import MNIST_BADNET_PREPROCESSING

    return {"output": "probabilities", "preprocessing": MNIST_BADNET_PREPROCESSING}
