"""Small seeded PyTorch models trained on scikit-learn's digits, shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from neuralcleanse.backends.torch.architectures import small_cnn


def digits(upsample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (N, 1, 8*upsample, 8*upsample) float32 in [0, 1] and int64 labels."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((1, upsample, upsample), dtype=np.float32))
    return x[:, None], data.target.astype(np.int64)


def stamp_square(x: np.ndarray, size: int) -> np.ndarray:
    """White ``size`` x ``size`` square in the bottom-right corner (channels-first)."""
    out = x.copy()
    out[..., -size:, -size:] = 1.0
    return out


def train(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 12) -> torch.nn.Module:
    """Train small_cnn with Adam; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = small_cnn(in_channels=x.shape[1], nb_classes=10, image_size=x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), 64):
            idx = order[start:start + 64]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


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
