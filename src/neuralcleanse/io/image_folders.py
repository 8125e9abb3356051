"""Reading images and labels from a folder with one sub-folder of images per class.

The label rule (numbered or named class folders), the bit depths read and the folders refused
are documented in :func:`neuralcleanse.io.data_files.load_data`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import LoadError, one_line

#: File suffixes read as images (others in a class folder are counted as ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: Pillow modes read as 8 bits per channel (palette images through their palette; any alpha
#: channel is dropped).
_MODES_8BIT = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK",
                         "YCbCr", "LAB", "HSV"})
#: Pillow's 16-bit grey modes.
_MODES_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: 32-bit integer and float modes: no standard full scale, so their values are kept as stored.
_MODES_32BIT = frozenset({"I", "F"})
_GREY_MODES = frozenset({"1", "L", "LA", "La"}) | _MODES_16BIT | _MODES_32BIT


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _class_labels(path: Path, names: list[str]) -> tuple[dict[str, int], str]:
    """Label of each class folder name, and the rule that gave them (see ``load_data``)."""
    numbers = [n for n in names if _is_number(n)]
    if numbers and len(numbers) != len(names):
        other = next(n for n in names if not _is_number(n))
        raise LoadError(f"the class folders of {str(path)!r} mix label numbers ({numbers[0]!r}) "
                        f"and names ({other!r}): name every class folder by its label number, "
                        "or every one by a name")
    if not numbers:
        return ({n: i for i, n in enumerate(sorted(names))},
                "class folder names sorted, numbered from 0")
    label_of = {n: int(n) for n in names}
    seen: dict[int, str] = {}
    for n in sorted(names):
        if label_of[n] in seen:
            raise LoadError(f"the class folders {seen[label_of[n]]!r} and {n!r} of {str(path)!r} "
                            f"both name label {label_of[n]}")
        seen[label_of[n]] = n
    alphabetical = {n: i for i, n in enumerate(sorted(names))}
    if alphabetical != label_of:
        moved = next(n for n in sorted(names) if alphabetical[n] != label_of[n])
        warnings.warn(f"the class folders of {str(path)!r} are read as label numbers (folder "
                      f"{moved!r} is label {label_of[moved]}); torchvision's ImageFolder and "
                      f"Keras number folders in sorted order instead ({moved!r} would be "
                      f"{alphabetical[moved]}): if the model was trained that way, rename the "
                      "folders so that both agree (e.g. 00, 01, ..., 10)", UserWarning,
                      stacklevel=4)
    return label_of, "class folder names are the label numbers"


def _first_image_below(folder: Path) -> Path | None:
    """The first image file anywhere below ``folder`` (hidden folders skipped), if any."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                return Path(root) / name
    return None


def _bit_depth(mode: str, f: Path) -> int:
    if mode in _MODES_8BIT:
        return 8
    if mode in _MODES_16BIT:
        return 16
    if mode in _MODES_32BIT:
        return 32
    raise LoadError(f"image {str(f)!r} has the pixel mode {mode!r}, which is not read; save it "
                    "as 8-bit grey or RGB, or 16-bit grey")


def _pixels(im: Any, depth: int, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image as ``(H, W, channels)``: uint8 for 8-bit images, float32 otherwise.

    16-bit values are divided by 257, which maps 0..65535 onto 0..255 (the range of the 8-bit
    images); 32-bit values are kept as stored.
    """
    from PIL import Image

    if depth == 8:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        return arr[..., None] if channels == 1 else arr
    values = np.asarray(im).astype(np.float32)
    if depth == 16:
        values /= 257.0
    if values.shape[::-1] != size:
        values = np.asarray(Image.fromarray(values).resize(size, Image.Resampling.BILINEAR),
                            dtype=np.float32)
    return np.repeat(values[..., None], channels, axis=2)


def _has_transparent_pixels(im: Any) -> bool:
    if not getattr(im, "has_transparency_data", False):
        return False
    alpha = im.convert("RGBA").getchannel("A")
    return bool(alpha.getextrema()[0] < 255)


def read_image_folder(path: Path, *, image_size: tuple[int, int] | None,
                      channels: int | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images, labels and facts for the report from a folder of class folders.

    See :func:`~neuralcleanse.io.data_files.load_data` for the label rule, the bit depths and
    the folders refused. Call it from ``load_data`` only: its warnings point at the caller's
    caller (``stacklevel``).

    Raises:
        LoadError: On a folder whose labels would be ambiguous, images outside the class
            folders or nested inside them, images that cannot be read, or mixed bit depths.
    """
    from PIL import Image

    entries = sorted((e for e in path.iterdir() if not e.name.startswith(".")),
                     key=lambda e: e.name)
    classes = [d for d in entries if d.is_dir()]
    if not classes:
        raise LoadError(f"{str(path)!r} has no sub-folders: an image folder needs one "
                        "sub-folder of images per class")
    loose = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise LoadError(f"{str(path)!r} holds images outside the class folders (e.g. "
                        f"{loose[0].name!r}): put every image in the sub-folder of its class")
    label_of, rule = _class_labels(path, [d.name for d in classes])
    files: list[tuple[Path, int]] = []
    empty: list[str] = []
    ignored = 0
    for d in classes:
        found = 0
        for f in sorted(d.iterdir(), key=lambda e: e.name):
            if f.name.startswith("."):
                continue
            if f.is_dir():
                nested = _first_image_below(f)
                if nested is not None:
                    raise LoadError(f"image {str(nested)!r} lies in a folder nested inside the "
                                    f"class folder {d.name!r}: each class folder must hold its "
                                    "images directly; give the folder whose sub-folders are "
                                    "the classes")
            elif f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label_of[d.name]))
                found += 1
            else:
                ignored += 1
        if not found:
            empty.append(d.name)
    if not files:
        raise LoadError(f"no images found under {str(path)!r} (looked for "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    images, depths = [], []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read image {str(f)!r}: {one_line(exc)}") from None
        depths.append(_bit_depth(images[-1].mode, f))
    if 32 in depths and set(depths) != {32}:
        f32 = files[depths.index(32)][0]
        other = files[next(i for i, d in enumerate(depths) if d != 32)][0]
        raise LoadError(f"{str(path)!r} mixes 32-bit images ({f32.name!r}), whose values have no "
                        f"standard range, with 8- or 16-bit images ({other.name!r}); convert "
                        "them to one bit depth")
    if channels is None:
        channels = 1 if all(im.mode in _GREY_MODES for im in images) else 3
    if channels not in (1, 3):
        raise LoadError(f"image folders are read with 1 or 3 channels (got {channels})")
    if image_size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise LoadError(f"the images under {str(path)!r} have {len(sizes)} different sizes; "
                            "give image_size= to resize them")
        w, h = sizes.pop()
        image_size = (h, w)
    h, w = (int(v) for v in image_size)
    transparent = sum(_has_transparent_pixels(im) for im in images)
    arrays = [_pixels(im, depth, channels, (w, h)) for im, depth in zip(images, depths)]
    x = np.stack(arrays) if set(depths) == {8} else np.stack(arrays).astype(np.float32)
    y = np.array([label for _, label in files], dtype=np.int64)
    info: dict[str, Any] = {"source": str(path), "format": "image folder",
                            "stored_shape": list(x.shape), "stored_dtype": str(x.dtype),
                            "label_rule": rule, "label_of": dict(label_of),
                            "bit_depths": sorted(set(depths))}
    if not all(_is_number(n) for n in label_of):
        info["class_names"] = sorted(label_of)
    if 16 in depths:
        info["value_scale"] = "16-bit images divided by 257 (0..65535 read as 0..255)"
    elif 32 in depths:
        info["value_scale"] = "32-bit values kept as stored"
    resized = sum(im.size != (w, h) for im in images)
    if resized:
        info["resized"] = int(resized)
    if ignored:
        info["ignored_files"] = int(ignored)
    if transparent:
        info["transparent_images"] = int(transparent)
        warnings.warn(f"{transparent} image(s) under {str(path)!r} have transparent pixels; "
                      "their alpha channel is dropped (as torchvision and Keras do when they "
                      "read RGB), so transparent pixels take their stored colour",
                      UserWarning, stacklevel=3)
    if empty:
        info["empty_classes"] = empty
        warnings.warn(f"class folder(s) {', '.join(repr(n) for n in empty)} under "
                      f"{str(path)!r} hold no images: their label(s) "
                      f"{', '.join(str(label_of[n]) for n in empty)} keep their numbers and "
                      "have no clean images", UserWarning, stacklevel=3)
    return x, y, info
