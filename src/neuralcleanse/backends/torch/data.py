"""The items of a PyTorch ``Dataset``, or the batches of a ``DataLoader``, as numpy arrays.

The structure of the items is read by :mod:`neuralcleanse.backends.data`; this module only
walks the dataset and turns tensors (and PIL images) into arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def torch_elements(data: Dataset | DataLoader, max_samples: int
                   ) -> tuple[Iterator[Any], bool, Callable[[Any], np.ndarray]]:
    """The elements to read: ``(elements, whether they are batches, element to array)``.

    A ``DataLoader`` gives its batches; a map-style ``Dataset`` its first ``max_samples + 1``
    items (one more than asked for, to tell whether there are more); an ``IterableDataset``
    as many items of its iteration.
    """
    if isinstance(data, DataLoader):
        return iter(data), True, to_array
    return _items(data, max_samples + 1), False, to_array


def _items(data: Dataset, limit: int) -> Iterator[Any]:
    try:
        size = len(data)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset
        yield from itertools.islice(iter(data), limit)  # type: ignore[call-overload]
        return
    for i in range(min(size, limit)):
        yield data[i]


def to_array(value: Any) -> np.ndarray:
    """A tensor, a numpy array, a number or a PIL image as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
