"""scikit-learn's bundled 8x8 digits as image batches, and square triggers to plant on them.

The demo, the tests and the benchmarks train small backdoored models on these digits: they ship
with scikit-learn, so nothing is downloaded. scikit-learn is needed only here (the ``demo``
extra).
"""

from __future__ import annotations

import numpy as np

from neuralcleanse.core.errors import InputError


def digits_images(upsample: int = 1, channels_first: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float32 images in [0, 1] and their int64 labels.

    Args:
        upsample: Each pixel becomes an ``upsample`` x ``upsample`` block (2 gives 16x16).
        channels_first: ``(N, 1, H, W)`` when true, else ``(N, H, W, 1)``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits data needs scikit-learn: pip install "
                         "'neuralcleanse[demo]'") from None
    if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
        raise InputError(f"upsample must be an integer >= 1 (got {upsample!r})")
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    images = images.repeat(upsample, axis=1).repeat(upsample, axis=2)
    images = images[:, None] if channels_first else images[..., None]
    return images, data.target.astype(np.int64)


def stamp_square(x: np.ndarray, size: int, *, channels_first: bool = True, margin: int = 0,
                 value: float = 1.0) -> np.ndarray:
    """A copy of ``x`` with a ``size`` x ``size`` square of ``value`` near the bottom-right.

    Args:
        x: Images ``(N, C, H, W)`` (``channels_first``) or ``(N, H, W, C)``.
        size: Side of the square in pixels.
        channels_first: The layout of ``x``.
        margin: Pixels left between the square and the bottom and right edges.
        value: Pixel value of the square in every channel.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    h = out.shape[2] if channels_first else out.shape[1]
    w = out.shape[3] if channels_first else out.shape[2]
    rows = slice(h - margin - size, h - margin)
    cols = slice(w - margin - size, w - margin)
    if channels_first:
        out[:, :, rows, cols] = value
    else:
        out[:, rows, cols, :] = value
    return out
