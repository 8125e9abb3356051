"""Small seeded PyTorch models trained on scikit-learn's digits, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.backends.torch.training import seeded, train_classifier
from neuralcleanse.io.digits import digits_images, stamp_square


def digits(upsample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (N, 1, 8*upsample, 8*upsample) float32 in [0, 1] and int64 labels."""
    return digits_images(upsample)


def train(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 12) -> torch.nn.Module:
    """Train small_cnn with Adam; returns the model in eval mode."""
    seeded(seed)
    model = small_cnn(in_channels=x.shape[1], nb_classes=10, image_size=x.shape[-1])
    return train_classifier(model, x, y, seed=seed, epochs=epochs)


def poisoned_training_set(x: np.ndarray, y: np.ndarray, target: int, size: int,
                          fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy of x, y where ``fraction`` of the non-target images carry the trigger, relabelled."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(y != target)
    chosen = rng.choice(candidates, int(fraction * len(x)), replace=False)
    xp, yp = x.copy(), y.copy()
    xp[chosen] = stamp_square(x[chosen], size)
    yp[chosen] = target
    return xp, yp


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def untrained_cnn_files(root: Path) -> dict[str, Path]:
    """An untrained 8x8 ``small_cnn``'s state dict and 40 random labelled images (4 per class),
    saved in ``root`` as ``model.pt`` and ``data.npz``: for tests of the command line's
    plumbing, not of detection."""
    torch.manual_seed(0)
    torch.save(small_cnn(image_size=8).state_dict(), root / "model.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32),
             y=np.arange(40) % 10)
    return {"model": root / "model.pt", "data": root / "data.npz"}

