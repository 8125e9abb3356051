"""Checks of what the ART-compatible estimators are given: input batches, labels and targets.

They apply the library's input rules (:mod:`neuralcleanse.core.checks`) to an estimator's
arguments, and accept what ART accepts besides numpy arrays (framework tensors, nested
sequences, one-hot labels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuralcleanse.core.checks import add_channel_axis, as_images, as_label_vector
from neuralcleanse.core.errors import InputError
from neuralcleanse.frontends.art.parameters import python_scalar


def to_numpy(value: Any) -> np.ndarray:
    """An array from numpy, a framework tensor or a nested sequence."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def model_inputs(x: Any, input_shape: tuple[int, ...], channels_first: bool, name: str = "x",
                 allow_empty: bool = True) -> np.ndarray:
    """Raw input samples ``x`` as float32 ``(N, *input_shape)``.

    Single-channel images given without their channel axis, ``(N, H, W)``, get it.

    Raises:
        InputError: On a non-numeric dtype, another shape, NaN or infinite values, or (unless
            ``allow_empty``) an empty batch; the message names ``name``.
    """
    arr = to_numpy(x)
    shape = tuple(input_shape)
    if allow_empty and arr.ndim == len(shape) + 1 and len(arr) == 0 \
            and tuple(arr.shape[1:]) == shape:
        return np.zeros((0, *shape), dtype=np.float32)
    images = as_images(arr, name)
    if images.ndim == len(shape) == 3 and _lacks_channel_axis(images, shape, channels_first):
        images = add_channel_axis(images, channels_first)
    if images.ndim != len(shape) + 1 or tuple(images.shape[1:]) != shape:
        raise InputError(f"{name} must have shape (N, {', '.join(map(str, shape))}); got "
                         f"{arr.shape}")
    return images


def _lacks_channel_axis(images: np.ndarray, shape: tuple[int, ...],
                        channels_first: bool) -> bool:
    """Whether ``(N, H, W)`` images are single-channel inputs of ``shape`` without that axis."""
    if channels_first:
        return shape[0] == 1 and tuple(images.shape[1:]) == shape[1:]
    return shape[-1] == 1 and tuple(images.shape[1:]) == shape[:-1]


def label_vector(y: Any, n: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Integer labels ``(n,)`` from indices or one-hot rows (:func:`as_label_vector`).

    Raises:
        InputError: As :func:`~neuralcleanse.core.checks.as_label_vector`, naming ``name``.
    """
    try:
        return as_label_vector(to_numpy(y), n, nb_classes)
    except InputError as exc:
        if name == "y":
            raise
        raise InputError(f"{name}: {exc}") from None


def class_labels(label: Any, n: int, nb_classes: int) -> np.ndarray | None:
    """The ``label`` argument of ``class_gradient``: ``None``, or one class per sample.

    Raises:
        InputError: If ``label`` is not ``None``, a class index or ``n`` class indices.
    """
    if label is None:
        return None
    label = python_scalar(label)
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < nb_classes:
            raise InputError(f"label must be in 0..{nb_classes - 1} (got {label})")
        return np.full(n, label, dtype=np.int64)
    arr = np.asarray(label)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) != n:
        raise InputError(f"label must be None, an int or one integer class per sample "
                         f"(length {n}); got {label!r}")
    if arr.size and (arr.min() < 0 or arr.max() >= nb_classes):
        raise InputError(f"label values must be in 0..{nb_classes - 1}")
    return arr.astype(np.int64)


def target_label(y_target: Any, nb_classes: int) -> int:
    """The ``y_target`` of ``generate_backdoor``: a label index or a one-hot vector.

    Raises:
        InputError: On anything else or a label out of range.
    """
    value = python_scalar(y_target)
    if isinstance(value, int) and not isinstance(value, bool):
        target = value
    else:
        arr = np.asarray(value)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1 or len(arr) != nb_classes or arr.dtype.kind not in "fiub":
            raise InputError(f"y_target must be a label index or a one-hot vector of length "
                             f"{nb_classes} (got {y_target!r})")
        target = int(np.argmax(arr))
    if not 0 <= target < nb_classes:
        raise InputError(f"y_target must be in 0..{nb_classes - 1} (got {target})")
    return target
