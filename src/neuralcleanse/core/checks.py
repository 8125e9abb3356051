"""Checks of the user's inputs: the one home of input validation, used by every entry point."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError


def as_label_vector(y: np.ndarray, n: int, nb_classes: int | None = None) -> np.ndarray:
    """Return integer labels ``(n,)`` from ``y``, checked against ``n`` images and the model.

    Accepted encodings, and nothing else:

    * a vector ``(N,)`` of whole numbers (integer or float dtype) in ``0..nb_classes-1``;
    * a column ``(N, 1)`` of such numbers (read as the vector);
    * one-hot rows ``(N, nb_classes)``: every entry 0 or 1 (or ``False``/``True``) and exactly
      one 1 per row. Rows of another width, soft labels (probabilities, label smoothing) and
      rows without a single 1 are refused rather than reduced with ``argmax``.

    Boolean vectors are refused (``True``/``False`` is not a class number; give
    ``y.astype(int)`` for a two-class model).

    Raises:
        InputError: On any other shape or dtype, a length mismatch, non-finite or fractional
            values, or labels out of ``0..nb_classes-1``.
    """
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"y must hold integer class labels or one-hot rows (got dtype "
                         f"{arr.dtype})")
    if arr.ndim == 2 and arr.shape[1] > 1:
        return _from_one_hot(arr, n, nb_classes)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"y must be integer labels (N,) or one-hot rows (N, classes); got "
                         f"shape {np.asarray(y).shape}")
    if arr.shape[0] != n:
        raise InputError(f"x has {n} images but y has {arr.shape[0]} labels")
    if arr.dtype.kind == "b":
        raise InputError("y is boolean: give integer class labels (for a two-class model, "
                         "y.astype(int)) or one-hot rows")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError("y contains NaN or infinite values")
        if np.any(arr != np.round(arr)):
            bad = arr[arr != np.round(arr)][0]
            raise InputError(f"y must hold whole-number class labels (found {bad!r}); soft "
                             "labels are not accepted")
    lowest, highest = arr.min(), arr.max()
    if lowest < 0:
        raise InputError(f"labels must be >= 0 (found {_number(lowest)})")
    if nb_classes is not None and highest >= nb_classes:
        raise InputError(f"labels must be < {nb_classes}, the model's number of outputs "
                         f"(found {_number(highest)})")
    if float(highest) > 2.0**62:
        raise InputError(f"labels must be class numbers (found {_number(highest)})")
    return arr.astype(np.int64)


def _number(value: Any) -> str:
    """A label value for a message: integers without a trailing ``.0``."""
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)


def _from_one_hot(arr: np.ndarray, n: int, nb_classes: int | None) -> np.ndarray:
    """Labels from one-hot rows, refusing any row that is not exactly one-hot."""
    width = arr.shape[1]
    if arr.shape[0] != n:
        raise InputError(f"x has {n} images but y has {arr.shape[0]} label rows")
    if nb_classes is not None and width != nb_classes:
        raise InputError(f"y has one-hot rows of width {width} but the model has {nb_classes} "
                         "outputs: give integer labels or rows of that width")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError("y contains NaN or infinite values")
    ones, zeros = arr == 1, arr == 0
    bad = np.flatnonzero(~np.all(ones | zeros, axis=1) | (ones.sum(axis=1) != 1))
    if bad.size:
        raise InputError(f"y has {bad.size} row(s) that are not one-hot (first: row "
                         f"{int(bad[0])}); soft labels are not accepted: give integer labels "
                         "(e.g. y.argmax(axis=1) if that is what you mean)")
    return ones.argmax(axis=1).astype(np.int64)


def as_images(x: np.ndarray, name: str = "x") -> np.ndarray:
    """Return ``x`` as a float32 array of images, checking it is non-empty and finite.

    Raises:
        InputError: On a non-numeric dtype (object, complex, strings), a shape that is not
            ``(N, H, W)`` or ``(N, H, W, C)`` / ``(N, C, H, W)``, an empty batch or axis, NaN or
            infinite values, or values too large for float32.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{name} must be a numeric array (got dtype {arr.dtype})")
    if arr.ndim not in (3, 4):
        raise InputError(f"{name} must be a batch of images, shape (N, H, W) or (N, H, W, C) or "
                         f"(N, C, H, W); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} is empty: at least one batch of clean images is needed")
    if 0 in arr.shape[1:]:
        raise InputError(f"{name} has images of shape {arr.shape[1:]}, with an empty axis")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contains NaN or infinite values")
        if arr.dtype.itemsize > 4 and np.abs(arr).max() > np.finfo(np.float32).max:
            raise InputError(f"{name} has values up to {np.abs(arr).max():g}, beyond the float32 "
                             "range the models compute in")
    return arr.astype(np.float32, copy=True)


def infer_clip_values(x: np.ndarray) -> tuple[float, float]:
    """Guess the raw input range: [0, 1] or [0, 255] when the data fits, else its own range.

    Raises:
        InputError: On empty, non-numeric or non-finite data, or data of one single value
            outside [0, 255] (no range can be told from it: give ``clip_values``).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise InputError(f"cannot infer clip_values from data of dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError("cannot infer clip_values from empty data")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("cannot infer clip_values: the data contains NaN or infinite values")
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if lo >= 0.0 and hi <= 255.0:
        return 0.0, 255.0
    if not lo < hi:
        raise InputError(f"cannot infer clip_values: every value is {lo:g}; give clip_values")
    return lo, hi


def class_counts(y: np.ndarray, nb_classes: int) -> list[int]:
    """Number of images of each class."""
    return np.bincount(y, minlength=nb_classes).astype(int).tolist()


#: Largest input value magnitude accepted anywhere: images are computed in float32, where
#: larger ranges overflow once a trigger is stamped and normalised.
MAX_INPUT_VALUE = 1e30


def check_clip_values(value: Any) -> tuple[float, float]:
    """Return ``value`` as a ``(min, max)`` pair of finite floats with ``min < max``.

    Constant arrays are accepted for either bound (ART passes them); per-feature bounds are not,
    since the trigger search needs one value range for every pixel.

    Raises:
        InputError: If ``value`` is not such a pair.
    """
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise InputError(f"clip_values must be a (min, max) pair (got {value!r})") from None
    bounds = []
    for side, bound in (("min", lo), ("max", hi)):
        try:
            arr = np.asarray(bound, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"clip_values {side} must be a number (got {bound!r})") from None
        if arr.size == 0 or not np.all(arr == arr.flat[0]):
            raise InputError(f"clip_values {side} must be one number for all features; "
                             "per-feature bounds are not supported by the trigger search")
        if not math.isfinite(float(arr.flat[0])) or abs(float(arr.flat[0])) > MAX_INPUT_VALUE:
            raise InputError(f"clip_values {side} must be a finite number within "
                             f"+-{MAX_INPUT_VALUE:g} (got {bound!r})")
        bounds.append(float(arr.flat[0]))
    if not bounds[0] < bounds[1]:
        raise InputError(f"clip_values must be (min, max) with min < max (got {value!r})")
    return bounds[0], bounds[1]


def check_in_clip_range(images: np.ndarray, clip_values: tuple[float, float],
                        name: str = "x") -> None:
    """Refuse images with values outside ``clip_values`` (beyond a 1e-4 relative tolerance)."""
    lo, hi = clip_values
    tolerance = 1e-4 * (hi - lo)
    if images.min() < lo - tolerance or images.max() > hi + tolerance:
        raise InputError(f"{name} has values in [{images.min():g}, {images.max():g}], outside "
                         f"clip_values [{lo:g}, {hi:g}]: give raw images in the model's input "
                         "range, or set clip_values")


def add_channel_axis(images: np.ndarray, channels_first: bool) -> np.ndarray:
    """Give a batch of single-channel images ``(N, H, W)`` its channel axis; others unchanged."""
    if images.ndim != 3:
        return images
    return images[:, None] if channels_first else images[..., None]


def rows_are_probabilities(outputs: np.ndarray) -> bool:
    """Whether model outputs are probability rows (non-negative, each row summing to 1).

    The one rule used everywhere the output kind is detected or checked.
    """
    out = np.asarray(outputs, dtype=np.float64)
    return bool(out.size and out.min() >= 0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def output_kind_mismatch(outputs: np.ndarray, declared: str) -> str | None:
    """A warning text when ``outputs`` contradict the ``declared`` kind, else ``None``."""
    probabilities = rows_are_probabilities(outputs)
    if declared == "logits" and probabilities:
        return ("the model's outputs look like probabilities (non-negative rows summing to 1) "
                "but output='logits' was given; pass output='probabilities' so that the loss "
                "takes their logarithm")
    if declared == "probabilities" and not probabilities:
        return ("output='probabilities' was given but the model's outputs are not probability "
                "rows; pass output='logits'")
    return None
