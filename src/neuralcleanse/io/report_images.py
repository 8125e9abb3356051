"""The reversed triggers as images: 8-bit arrays, PNG files and inlined ``data:`` URIs."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from neuralcleanse.core.results import LabelResult, ScanResult


def _channels_first(result: ScanResult, pattern: np.ndarray, mask_shape: tuple[int, ...]
                    ) -> bool:
    known = result.model_info.get("channels_first")
    if isinstance(known, bool):
        return known
    return pattern.ndim == 3 and pattern.shape[-2:] == mask_shape


def _value_range(result: ScanResult, pattern: np.ndarray) -> tuple[float, float]:
    clip = result.model_info.get("clip_values")
    if isinstance(clip, (list, tuple)) and len(clip) == 2:
        lo, hi = float(clip[0]), float(clip[1])
        if hi > lo:
            return lo, hi
    lo, hi = float(pattern.min()), float(pattern.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def picture(result: ScanResult, image: np.ndarray, mask_shape: tuple[int, ...]) -> np.ndarray:
    """One model input (a pattern or an image) scaled to [0, 1] as ``(H, W)`` or ``(H, W, 3)``.

    The model's value range (``model_info.clip_values``) maps to [0, 1]; inputs that are
    neither grey nor RGB show their channel mean.
    """
    lo, hi = _value_range(result, image)
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and _channels_first(result, array, mask_shape):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[2] != 3:
        array = array.mean(axis=2)  # neither grey nor RGB: show the channel mean
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0)


def to8(unit: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as 8-bit values."""
    return np.round(np.asarray(unit) * 255.0).astype(np.uint8)


def trigger_arrays(result: ScanResult, label: LabelResult) -> dict[str, np.ndarray]:
    """Mask, pattern and ``mask * pattern`` of one label as 8-bit images ``(H, W[, 3])``.

    The pattern is scaled from the model's value range to [0, 255]; the trigger image is the
    part of the pattern the mask lets through, on black.
    """
    return mask_pattern_arrays(result, label.mask, label.pattern)


def mask_pattern_arrays(result: ScanResult, mask: np.ndarray, pattern: np.ndarray
                        ) -> dict[str, np.ndarray]:
    """:func:`trigger_arrays` of a mask ``(H, W)`` and pattern given as arrays."""
    mask = np.clip(np.asarray(mask, dtype=np.float64), 0.0, 1.0)
    unit = picture(result, pattern, mask.shape)
    shown = unit * (mask if unit.ndim == 2 else mask[..., None])
    return {"mask": to8(mask), "pattern": to8(unit), "trigger": to8(shown)}


def png_bytes(array: np.ndarray, min_side: int = 0) -> bytes:
    """PNG file of an 8-bit image ``(H, W)`` or ``(H, W, 3)``.

    An image whose shorter side is under ``min_side`` pixels is enlarged by a whole factor
    (nearest neighbour) until it is not.
    """
    from PIL import Image

    image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    side = min(image.size)
    if min_side and side < min_side:
        factor = math.ceil(min_side / side)
        image = image.resize((image.size[0] * factor, image.size[1] * factor),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """``png`` as a ``data:`` URI, to inline it in the HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
