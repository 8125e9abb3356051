"""Seeded training of small PyTorch classifiers (the demo's and the tests' backdoored models)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def train_classifier(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, seed: int,
                     epochs: int, learning_rate: float = 3e-3, batch_size: int = 64
                     ) -> torch.nn.Module:
    """Train ``model`` with Adam on the cross-entropy; deterministic for a seed.

    The caller seeds the model's initialisation (``torch.manual_seed``) before building it; the
    batch order comes from its own generator seeded with ``seed``.

    Returns:
        The model, trained in place and switched to inference mode.
    """
    xs, ys = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y))
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seeded(seed: int) -> None:
    """Seed torch's global generator (the initialisation of the next model built)."""
    torch.manual_seed(seed)
