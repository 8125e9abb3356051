"""A trigger the user already knows (mask and pattern image files), for the report.

When the true trigger of a backdoor is known (a planted one, or one found in the wild), the
report shows it beside the reversed trigger so that the two can be compared by eye. It is
stored in ``report.json`` as ``model_info["known_trigger"]``: ``label`` (the known target, or
``None``), ``mask`` (flattened, shape ``mask_shape`` = ``(H, W)``, values in [0, 1]),
``pattern`` (flattened, shape ``pattern_shape`` = one input, raw value range) and ``files``.

The image files are untrusted: Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) is enforced as an error, and every problem is a one-line
:class:`~neuralcleanse.core.errors.LoadError` naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, LoadError

KEY = "known_trigger"


def _read_image(path: Path, mode: str, size: tuple[int, int], what: str) -> np.ndarray:
    """Pixels of ``path`` converted to ``mode`` (``"L"`` or ``"RGB"``), as uint8 ``(H, W[, 3])``.

    ``size`` is ``(H, W)``; an image of another size is refused before its pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    name = repr(str(path))
    if not path.is_file():
        raise LoadError(f"the known trigger's {what} file {name} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if (height, width) != tuple(size):
                    raise LoadError(
                        f"the known trigger's {what} {name} is {width}x{height} pixels but the "
                        f"model's images are {size[1]}x{size[0]} (width x height): give an "
                        "image of the model's input size")
                pixels = np.asarray(image.convert(mode), dtype=np.uint8)
    except LoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LoadError(f"the known trigger's {what} {name} has more pixels than "
                        f"PIL.Image.MAX_IMAGE_PIXELS allows ({Image.MAX_IMAGE_PIXELS}); it "
                        "cannot be a trigger for this model") from None
    except UnidentifiedImageError:
        raise LoadError(f"the known trigger's {what} {name} is not an image Pillow can read "
                        "(give a PNG)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise LoadError(f"the known trigger's {what} {name} could not be read ({detail}); "
                        "give a valid PNG") from None
    return pixels


def read_known_trigger(mask_path: str | Path, pattern_path: str | Path | None, *,
                       input_shape: Sequence[int], channels_first: bool,
                       clip_values: tuple[float, float], label: int | None = None
                       ) -> dict[str, Any]:
    """Read a known trigger's mask (and pattern) images for the model's input.

    Args:
        mask_path: Grey image of the mask (0 = not stamped, 255 = fully stamped); a colour image
            is converted to grey.
        pattern_path: Image of the pattern, scaled from 0-255 to ``clip_values``; ``None``
            gives a white pattern (every value at the top of the range).
        input_shape: One model input, ``(C, H, W)`` or ``(H, W, C)`` (or ``(H, W)``).
        channels_first: The layout of ``input_shape``.
        clip_values: The model's raw value range ``(min, max)``.
        label: The known target label, or ``None`` when it is not known.

    Returns:
        The ``model_info["known_trigger"]`` entry (see the module's docstring).

    Raises:
        LoadError: When a file is missing, not an image, too large, or of the wrong size.
        InputError: When ``input_shape`` has neither 1 nor 3 channels.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 2:
        size, channels = shape, 1
    elif len(shape) == 3:
        size = shape[1:] if channels_first else shape[:2]
        channels = shape[0] if channels_first else shape[2]
    else:
        raise InputError(f"input_shape= must have 2 or 3 axes to take a known trigger "
                         f"(got {shape})")
    if channels not in (1, 3):
        raise InputError(f"a known trigger needs grey or RGB inputs, but the model's have "
                         f"{channels} channels")
    lo, hi = float(clip_values[0]), float(clip_values[1])
    mask = _read_image(Path(mask_path), "L", size, "mask").astype(np.float32) / 255.0
    if pattern_path is None:
        pattern = np.full(shape, hi, dtype=np.float32)
        files = [str(mask_path)]
    else:
        pixels = _read_image(Path(pattern_path), "L" if channels == 1 else "RGB", size,
                             "pattern").astype(np.float32)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if channels_first:
            pixels = pixels.transpose(2, 0, 1)
        pattern = (lo + pixels / 255.0 * (hi - lo)).astype(np.float32).reshape(shape)
        files = [str(mask_path), str(pattern_path)]
    return known_trigger_entry(mask, pattern, label=label, files=files)


def known_trigger_entry(mask: np.ndarray, pattern: np.ndarray, *, label: int | None,
                        files: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON entry of a known trigger given as arrays (mask ``(H, W)``, one pattern)."""
    mask = np.asarray(mask, dtype=np.float32)
    pattern = np.asarray(pattern, dtype=np.float32)
    return {"label": None if label is None else int(label),
            "mask": mask.ravel().tolist(), "pattern": pattern.ravel().tolist(),
            "mask_shape": list(mask.shape), "pattern_shape": list(pattern.shape),
            "files": [str(f) for f in files]}


def known_trigger_arrays(model_info: dict[str, Any]) -> tuple[int | None, np.ndarray,
                                                              np.ndarray] | None:
    """``(label, mask, pattern)`` of a report's known trigger; ``None`` when absent or broken.

    The report is read defensively: an entry whose arrays do not match their shapes is ignored.
    """
    entry = model_info.get(KEY)
    if not isinstance(entry, dict):
        return None
    try:
        mask = np.asarray(entry["mask"], dtype=np.float64).reshape(entry["mask_shape"])
        pattern = np.asarray(entry["pattern"], dtype=np.float64).reshape(
            entry["pattern_shape"])
    except (KeyError, TypeError, ValueError):
        return None
    if mask.ndim != 2 or not (np.all(np.isfinite(mask)) and np.all(np.isfinite(pattern))):
        return None
    label = entry.get("label")
    if isinstance(label, bool) or not isinstance(label, int):
        label = None
    return label, mask, pattern
