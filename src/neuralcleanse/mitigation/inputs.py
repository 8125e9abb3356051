"""Validation of the data and options the mitigation functions receive."""

from __future__ import annotations

from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.checks import add_channel_axis, as_images, as_label_vector
from neuralcleanse.core.config import MAX_SEED
from neuralcleanse.core.errors import InputError
from neuralcleanse.mitigation.metrics import DataSplit, split_holdout


def check_int(name: str, value: Any, minimum: int, maximum: int = MAX_SEED) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]``, or raise ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not minimum <= value <= maximum:
        raise InputError(f"{name} must be an integer in [{minimum}, {maximum}] (got {value!r})")
    return int(value)


def check_positive(name: str, value: Any, maximum: float = float("inf")) -> float:
    """Return ``value`` as a finite float in ``(0, maximum]``, or raise ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or not 0 < value <= maximum:
        raise InputError(f"{name} must be a finite number in (0, {maximum:g}] (got {value!r})")
    return float(value)


def check_fraction(name: str, value: Any, *, allow_zero: bool = False,
                   allow_one: bool = True) -> float:
    """Return ``value`` as a float in a sub-range of [0, 1], or raise ``ValueError``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) \
        and np.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > 0 or (allow_zero and v == 0)) and (v < 1 or (allow_one and v == 1))
    if not ok:
        low = "[0" if allow_zero else "(0"
        high = "1]" if allow_one else "1)"
        raise InputError(f"{name} must be a number in {low}, {high} (got {value!r})")
    return float(value)


def model_images(clf: Classifier, x: Any, name: str) -> np.ndarray:
    """Validate images and give single-channel ``(N, H, W)`` batches the model's channel axis."""
    images = as_images(x, name=name)
    if len(clf.input_shape) == 3:
        images = add_channel_axis(images, clf.channels_first)
    if tuple(images.shape[1:]) != tuple(clf.input_shape):
        raise InputError(f"{name} has images of shape {images.shape[1:]} but the model expects "
                         f"{tuple(clf.input_shape)}")
    return images


def fit_and_test(clf: Classifier, x: Any, y: Any, x_test: Any, y_test: Any,
                 test_fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DataSplit]:
    """Validate the data; split a held-out part off ``x, y`` unless test data is given.

    Returns:
        ``(x_fit, y_fit, x_test, y_test, split)`` with images in the model's layout.

    Raises:
        ValueError: On malformed data, or when only one of ``x_test`` / ``y_test`` is given.
    """
    seed = check_int("seed", seed, 0)
    images = model_images(clf, x, "x")
    labels = as_label_vector(y, len(images), clf.nb_classes)
    if (x_test is None) != (y_test is None):
        raise InputError("give both x_test and y_test, or neither (then a held-out part is "
                         "split off x, y)")
    if x_test is None:
        return split_holdout(images, labels, test_fraction, seed)
    test_images = model_images(clf, x_test, "x_test")
    test_labels = as_label_vector(y_test, len(test_images), clf.nb_classes)
    split = DataSplit(source="given", n_fit=len(images), n_test=len(test_images))
    return images, labels, test_images, test_labels, split
