"""The reversed triggers as images: 8-bit arrays, PNG files and inlined ``data:`` URIs."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from neuralcleanse.core.results import LabelResult, ScanResult


def _channels_first(result: ScanResult, label: LabelResult) -> bool:
    known = result.model_info.get("channels_first")
    if isinstance(known, bool):
        return known
    return label.pattern.ndim == 3 and label.pattern.shape[-2:] == label.mask.shape


def _value_range(result: ScanResult, label: LabelResult) -> tuple[float, float]:
    clip = result.model_info.get("clip_values")
    if isinstance(clip, (list, tuple)) and len(clip) == 2:
        lo, hi = float(clip[0]), float(clip[1])
        if hi > lo:
            return lo, hi
    lo, hi = float(label.pattern.min()), float(label.pattern.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def trigger_arrays(result: ScanResult, label: LabelResult) -> dict[str, np.ndarray]:
    """Mask, pattern and ``mask * pattern`` of one label as 8-bit images ``(H, W[, 3])``.

    The pattern is scaled from the model's value range to [0, 255]; the trigger image is the
    part of the pattern the mask lets through, on black.
    """
    lo, hi = _value_range(result, label)
    pattern = label.pattern.astype(np.float64)
    if pattern.ndim == 3 and _channels_first(result, label):
        pattern = pattern.transpose(1, 2, 0)
    if pattern.ndim == 3 and pattern.shape[2] == 1:
        pattern = pattern[..., 0]
    elif pattern.ndim == 3 and pattern.shape[2] != 3:
        pattern = pattern.mean(axis=2)  # neither grey nor RGB: show the channel mean
    unit = np.clip((pattern - lo) / (hi - lo), 0.0, 1.0)
    mask = np.clip(label.mask.astype(np.float64), 0.0, 1.0)
    shown = unit * (mask if unit.ndim == 2 else mask[..., None])

    def to8(a: np.ndarray) -> np.ndarray:
        return np.round(a * 255.0).astype(np.uint8)

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
