"""Reading clean labelled data from files.

:func:`load_data` reads ``.npz`` archives (image and label keys detected or given) and folders of
images with one sub-folder per class. :func:`balanced_subsample` draws a seeded, class-balanced
subset, :func:`to_layout` moves the channel axis where the model wants it and
:func:`fingerprint` identifies the inputs of a scan (for resuming it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, LoadError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: Key names tried, in order, when an ``.npz`` archive's image / label keys are not given.
IMAGE_KEYS = ("x", "x_val", "x_valid", "x_test", "images", "X", "inputs", "data", "x_train")
LABEL_KEYS = ("y", "y_val", "y_valid", "y_test", "labels", "Y", "targets", "target", "y_train")



@dataclass
class LoadedData:
    """Clean labelled images read from a file or folder.

    Attributes:
        x: Raw images, ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, as stored.
        y: Integer labels ``(N,)``.
        info: Facts echoed in the report (source, keys, class names, ...).
    """

    x: np.ndarray
    y: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def load_data(path: str | Path, *, x_key: str | None = None, y_key: str | None = None,
              image_size: tuple[int, int] | None = None, channels: int | None = None
              ) -> LoadedData:
    """Read clean labelled images from an ``.npz`` archive or a folder of class folders.

    Args:
        path: An ``.npz`` file, or a folder with one sub-folder of images per class. Sub-folders
            named by integers give those labels; other names are sorted and numbered from 0.
        x_key: Key of the images in the ``.npz`` (detected when omitted).
        y_key: Key of the labels in the ``.npz`` (detected when omitted).
        image_size: ``(H, W)`` to resize folder images to (default: their common size).
        channels: 1 or 3 channels for folder images (default: 1 when every image is grey).

    Raises:
        LoadError: On a missing path, missing keys, or images that cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise LoadError(f"data path {str(p)!r} does not exist")
    if p.is_dir():
        if x_key is not None or y_key is not None:
            raise LoadError("--x-key / --y-key apply to .npz files, not to image folders")
        return _load_image_folder(p, image_size=image_size, channels=channels)
    if p.suffix.lower() == ".npz":
        return _load_npz(p, x_key=x_key, y_key=y_key)
    raise LoadError(f"unsupported data {str(p)!r}: give an .npz file or a folder with one "
                    "sub-folder of images per class")


def _pick(keys: list[str], given: str | None, candidates: tuple[str, ...], what: str,
          flag: str, path: Path) -> str:
    if given is not None:
        if given not in keys:
            raise LoadError(f"{path.name} has no key {given!r} ({flag}); its keys are: "
                            f"{', '.join(keys)}")
        return given
    for key in candidates:
        if key in keys:
            return key
    raise LoadError(f"cannot tell which key of {path.name} holds the {what} (keys: "
                    f"{', '.join(keys)}); give {flag}")


def _load_npz(path: Path, *, x_key: str | None, y_key: str | None) -> LoadedData:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"could not read {str(path)!r} as .npz: {one_line(exc)}") from None
    with archive:
        keys = list(archive.files)
        xk = _pick(keys, x_key, IMAGE_KEYS, "images", "--x-key", path)
        if y_key is None and xk.startswith(("x_", "X_")):
            paired = "y_" + xk[2:]
            y_key = paired if paired in keys else None
        yk = _pick(keys, y_key, LABEL_KEYS, "labels", "--y-key", path)
        try:
            x, y = archive[xk], archive[yk]
        except ValueError as exc:
            raise LoadError(f"could not read {path.name}: {one_line(exc)}") from None
    if len(x) != len(y):
        raise LoadError(f"{path.name}: {xk!r} has {len(x)} images but {yk!r} has {len(y)} "
                        "labels")
    return LoadedData(x=x, y=y, info={"source": str(path), "format": "npz", "x_key": xk,
                                      "y_key": yk, "stored_shape": list(x.shape),
                                      "stored_dtype": str(x.dtype)})


def _load_image_folder(path: Path, *, image_size: tuple[int, int] | None,
                       channels: int | None) -> LoadedData:
    from PIL import Image

    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise LoadError(f"{str(path)!r} has no sub-folders: an image folder needs one "
                        "sub-folder of images per class")
    numeric = all(d.name.isdigit() for d in classes)
    if numeric:
        classes.sort(key=lambda d: int(d.name))
        label_of = {d.name: int(d.name) for d in classes}
    else:
        label_of = {d.name: i for i, d in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    for d in classes:
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label_of[d.name]))
    if not files:
        raise LoadError(f"no images found under {str(path)!r} (looked for "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read image {str(f)!r}: {one_line(exc)}") from None
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I", "I;16", "F") for im in images) else 3
    if channels not in (1, 3):
        raise LoadError(f"image folders are read with 1 or 3 channels (got {channels})")
    if image_size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise LoadError(f"the images under {str(path)!r} have {len(sizes)} different sizes; "
                            "give --input-shape to resize them")
        w, h = sizes.pop()
        image_size = (h, w)
    h, w = image_size
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    x = np.stack(arrays)
    if channels == 1:
        x = x[..., None]
    y = np.array([label for _, label in files], dtype=np.int64)
    info: dict[str, Any] = {"source": str(path), "format": "image folder",
                            "stored_shape": list(x.shape), "stored_dtype": "uint8"}
    if not numeric:
        info["class_names"] = [d.name for d in classes]
    return LoadedData(x=x, y=y, info=info)


def balanced_subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded subsample of ``n`` items with the classes as balanced as possible.

    Every class gets ``n // classes`` items (classes with fewer give all they have and the
    rest is shared among the others); the indices come back sorted.

    Raises:
        ValueError: If ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"max_samples must be an integer >= 1 (got {n!r})")
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng([int(seed), 104729])
    classes = np.unique(y)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    # Fill the smallest classes first; each class gets an even share of what is left, so the
    # counts differ by at most one except for classes that have fewer images than their share.
    tie_break = rng.permutation(len(classes))
    order = sorted(range(len(classes)), key=lambda i: (len(pools[classes[i]]), tie_break[i]))
    quota = {}
    remaining = int(n)
    for rank, i in enumerate(order):
        c = classes[i]
        quota[c] = min(len(pools[c]), remaining // (len(order) - rank))
        remaining -= quota[c]
    chosen = np.concatenate([pools[c][:quota[c]] for c in classes])
    return np.sort(chosen)


def to_layout(x: np.ndarray, channels_first: bool, data_layout: str = "auto"
              ) -> tuple[np.ndarray, str | None]:
    """Move the channel axis of a 4-D image batch to where the model wants it.

    Args:
        x: Images ``(N, H, W)`` (left alone) or 4-D.
        channels_first: The model's layout.
        data_layout: ``"nhwc"``, ``"nchw"`` or ``"auto"``: guess from which axis has 1, 3 or 4
            entries.

    Returns:
        The images and a note saying what was changed (``None`` when nothing was).
    """
    if x.ndim != 4:
        return x, None
    layout = data_layout.lower()
    if layout not in ("auto", "nhwc", "nchw"):
        raise LoadError(f"--data-layout must be auto, nhwc or nchw (got {data_layout!r})")
    if layout == "auto":
        last, first = x.shape[-1] in (1, 3, 4), x.shape[1] in (1, 3, 4)
        if last and not first:
            layout = "nhwc"
        elif first and not last:
            layout = "nchw"
        else:
            layout = "nchw" if channels_first else "nhwc"
    if channels_first and layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC data moved to NCHW"
    if not channels_first and layout == "nchw":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NCHW data moved to NHWC"
    return x, None


def fingerprint(*parts: Any) -> str:
    """A short SHA-256 over files, arrays and JSON-friendly values (for resuming scans)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        elif isinstance(part, np.ndarray):
            digest.update(str(part.shape).encode())
            digest.update(str(part.dtype).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]
