"""Validation of the user's clean data and the deterministic mini-batch plan of a search."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import InputError


def as_label_vector(y: np.ndarray, n: int, nb_classes: int | None = None) -> np.ndarray:
    """Return integer labels from integer or one-hot ``y``, checked against ``n`` images.

    Raises:
        ValueError: On a length mismatch, non-integer values or labels out of range.
    """
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] > 1:
        if not np.all(np.isfinite(arr)):
            raise InputError("y contains NaN or infinite values")
        arr = arr.argmax(axis=1)
    elif arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"y must be integer labels (N,) or one-hot (N, classes); got shape "
                         f"{np.asarray(y).shape}")
    if arr.shape[0] != n:
        raise InputError(f"x has {n} images but y has {arr.shape[0]} labels")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError("y must hold whole-number class labels")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"y must hold integer class labels (got dtype {arr.dtype})")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(f"labels must be >= 0 (found {labels.min()})")
    if nb_classes is not None and labels.size and labels.max() >= nb_classes:
        raise InputError(f"labels must be < {nb_classes}, the model's number of outputs "
                         f"(found {labels.max()})")
    return labels


def as_images(x: np.ndarray, name: str = "x") -> np.ndarray:
    """Return ``x`` as a float32 array of images, checking it is non-empty and finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{name} must be a numeric array (got dtype {arr.dtype})")
    if arr.ndim not in (3, 4):
        raise InputError(f"{name} must be a batch of images, shape (N, H, W) or (N, H, W, C) or "
                         f"(N, C, H, W); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} is empty: at least one batch of clean images is needed")
    out = arr.astype(np.float32, copy=True)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{name} contains NaN or infinite values")
    return out


def infer_clip_values(x: np.ndarray) -> tuple[float, float]:
    """Guess the raw input range: [0, 1] or [0, 255] when the data fits, else its own range."""
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if lo >= 0.0 and hi <= 255.0:
        return 0.0, 255.0
    return lo, hi


def class_counts(y: np.ndarray, nb_classes: int) -> list[int]:
    """Number of images of each class."""
    return np.bincount(y, minlength=nb_classes).astype(int).tolist()


class BatchPlan:
    """Which clean images each mini-batch of each step uses.

    The images are read as an endless stream of seeded permutations of the data set; step ``s``
    of a label uses positions ``[s * M * B, (s + 1) * M * B)`` of that stream. The plan depends on
    the seed and the step only, so a label sees the same mini-batches whether it is optimised
    alone or stacked with others.
    """

    def __init__(self, n_images: int, batch_size: int, mini_batches: int, seed: int) -> None:
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
