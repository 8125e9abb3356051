"""The deterministic mini-batch plan of a trigger search."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from neuralcleanse.core.errors import InputError


class BatchPlan:
    """Which clean images each mini-batch of each step uses.

    The images are read as an endless stream of seeded permutations of the data set; step ``s``
    of a label uses positions ``[s * M * B, (s + 1) * M * B)`` of that stream. The plan depends on
    the seed and the step only, so a label sees the same mini-batches whether it is optimised
    alone or stacked with others.
    """

    def __init__(self, n_images: int, batch_size: int, mini_batches: int, seed: int) -> None:
        for what, value in (("the number of images", n_images), ("batch_size", batch_size),
                            ("mini_batches", mini_batches)):
            if int(value) < 1:
                raise InputError(f"{what} must be at least 1 for a batch plan (got {value})")
        self.n = n_images
        self.batch_size = batch_size
        self.mini_batches = mini_batches
        self.seed = seed
        self._epochs: OrderedDict[int, np.ndarray] = OrderedDict()

    def _epoch(self, e: int) -> np.ndarray:
        perm = self._epochs.get(e)
        if perm is None:
            perm = np.random.default_rng([self.seed, 7919, e]).permutation(self.n)
            self._epochs[e] = perm
            if len(self._epochs) > 64:
                self._epochs.popitem(last=False)
        return perm

    def step_indices(self, step: int) -> np.ndarray:
        """Image indices of one step, shape ``(mini_batches, batch_size)``."""
        per_step = self.mini_batches * self.batch_size
        start = step * per_step
        first, last = start // self.n, (start + per_step - 1) // self.n
        stream = np.concatenate([self._epoch(e) for e in range(first, last + 1)])
        offset = start - first * self.n
        return stream[offset:offset + per_step].reshape(self.mini_batches, self.batch_size)

    def indices(self, steps: np.ndarray) -> np.ndarray:
        """Indices for several labels at their own steps: shape ``(M, len(steps), B)``."""
        unique = {int(s): self.step_indices(int(s)) for s in np.unique(steps)}
        return np.stack([unique[int(s)] for s in steps], axis=1)
