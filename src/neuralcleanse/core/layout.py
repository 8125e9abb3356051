"""Where the channel axis is, and how an ``(H, W)`` trigger mask meets inputs of a given layout.

A trigger mask is one ``(H, W)`` plane shared by every colour channel. Inputs are ``(C, H, W)``
(channels first), ``(H, W, C)`` (channels last) or ``(H, W)``. These rules are written once here
and used by the search backends, the stamping of mitigation and the results.
"""

from __future__ import annotations

import numpy as np


def image_size(input_shape: tuple[int, ...], channels_first: bool) -> tuple[int, int]:
    """``(H, W)`` of inputs of ``input_shape``."""
    if len(input_shape) == 2:
        return int(input_shape[0]), int(input_shape[1])
    hw = input_shape[1:] if channels_first else input_shape[:2]
    return int(hw[0]), int(hw[1])


def mask_axes(input_shape: tuple[int, ...], channels_first: bool) -> tuple[int, ...]:
    """Shape that makes an ``(H, W)`` mask broadcast against one input of ``input_shape``."""
    h, w = image_size(input_shape, channels_first)
    if len(input_shape) == 2:
        return (h, w)
    return (1, h, w) if channels_first else (h, w, 1)


def mask_for_layout(mask: np.ndarray, input_shape: tuple[int, ...],
                    channels_first: bool) -> np.ndarray:
    """A view of an ``(H, W)`` mask that broadcasts against inputs of ``input_shape``."""
    return np.reshape(mask, mask_axes(input_shape, channels_first))
