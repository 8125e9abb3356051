"""Reading clean labelled data (or, on request, unlabelled inputs) from files.

:func:`load_data` reads ``.npz`` archives (image and label keys detected or given; see
:mod:`~neuralcleanse.io.npz_files`) and folders of images with one sub-folder per class (see
:mod:`~neuralcleanse.io.image_folders`). :func:`balanced_subsample` draws a seeded, class-balanced
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

from neuralcleanse.core.errors import InputError, LoadError
from neuralcleanse.io.image_folders import read_image_folder
from neuralcleanse.io.npz_files import read_npz

#: Sizes a channel axis can have in the layout checks (grey, RGB, RGBA).
CHANNEL_COUNTS = (1, 3, 4)


@dataclass
class LoadedData:
    """Clean labelled images read from a file or folder.

    Attributes:
        x: Raw images, ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, as stored.
        y: Labels ``(N,)`` (or one-hot rows) as stored; ``None`` only when the data was read
            with ``require_labels=False`` from an archive that holds no labels.
        info: Facts echoed in the report (source, keys, class names, ...).
    """

    x: np.ndarray
    y: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def load_data(path: str | Path, *, x_key: str | None = None, y_key: str | None = None,
              image_size: tuple[int, int] | None = None, channels: int | None = None,
              require_labels: bool = True) -> LoadedData:
    """Read clean labelled images from an ``.npz`` archive or a folder of class folders.

    An ``.npz`` archive must be a zip of plain ``.npy`` arrays: arrays of Python objects are
    refused (reading them could run code), and so is an archive whose arrays declare more than
    :data:`~neuralcleanse.io.npz_files.MAX_NPZ_BYTES` or more than the memory available
    (checked from the headers, before anything is decompressed). The arrays are returned as
    stored. With ``require_labels=False`` (inputs to classify or filter, which have no labels)
    an archive without a label key is read with ``y`` set to ``None`` (``info["y_key"]`` is
    ``None`` too), and an archive holding a single array, whatever its key, is read as the
    images; labels that are there are still read, and checked as usual.

    An image folder holds one sub-folder per class, with the images directly inside it
    (hidden files and folders, whose names start with ``.``, are skipped; other files are
    counted in ``info["ignored_files"]``). Its labels follow one rule, recorded in
    ``info["label_rule"]`` and ``info["label_of"]`` (folder name -> label):

    * when every class folder is named by a number (ASCII digits), that number is its label,
      whatever other folders exist (``"007"`` is label 7; two folders naming one number are
      refused). A warning says when this differs from the sorted order that torchvision's
      ``ImageFolder`` and Keras use;
    * when no class folder is named by a number, the names are sorted (by code point, as
      torchvision and Keras sort them) and numbered from 0; ``info["class_names"]`` lists
      them by label;
    * a mix of numbered and named folders is refused.

    An empty class folder keeps its label (labels never shift) and is listed in
    ``info["empty_classes"]`` with a warning. Images outside the class folders or in folders
    nested inside them are refused rather than skipped.

    Pixel values are read faithfully: 8-bit images (grey, RGB, palette images through their
    palette) as stored in 0..255; 16-bit grey images divided by 257, so that their full range
    0..65535 maps onto the same 0..255 (exactly; ``info["value_scale"]`` says so); 32-bit
    integer or float images with their values as stored, which is only allowed when every
    image of the folder is 32-bit (no common scale exists otherwise). An alpha channel is
    dropped (as torchvision and Keras do), with a warning when some pixels are transparent.
    Colour images read with one channel are converted with the ITU-R 601-2 luma weights;
    grey images read with three channels are repeated on each. The images come back as
    ``(N, H, W, channels)``: ``uint8`` when every image is 8-bit, else ``float32``.

    Args:
        path: An ``.npz`` file, or a folder with one sub-folder of images per class.
        x_key: Key of the images in the ``.npz`` (detected when omitted).
        y_key: Key of the labels in the ``.npz`` (detected when omitted).
        image_size: ``(H, W)`` to resize folder images to (default: their common size).
        channels: 1 or 3 channels for folder images (default: 1 when every image is grey).
        require_labels: Whether an ``.npz`` must hold labels (see above). A folder always
            gives the labels of its class folders.

    Raises:
        LoadError: On a missing path, missing keys, unsafe or oversized archives, images that
            cannot be read, or a folder whose labels would be ambiguous (see above).
    """
    p = Path(path)
    if not p.exists():
        raise LoadError(f"data path {str(p)!r} does not exist")
    if p.is_dir():
        if x_key is not None or y_key is not None:
            raise LoadError("x_key= / y_key= apply to .npz files, not to image folders")
        return LoadedData(*read_image_folder(p, image_size=image_size, channels=channels))
    if p.suffix.lower() == ".npz":
        return LoadedData(*read_npz(p, x_key=x_key, y_key=y_key,
                                    require_labels=require_labels))
    raise LoadError(f"unsupported data {str(p)!r}: give an .npz file or a folder with one "
                    "sub-folder of images per class")


def balanced_subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a seeded subsample of ``n`` items with the classes as balanced as possible.

    Every class gets ``n // classes`` items (classes with fewer give all they have and the
    rest is shared among the others); the indices come back sorted.

    Args:
        y: Class labels ``(N,)``: integers, or finite floats (each distinct value is a class).
        n: How many items to keep (an integer >= 1).
        seed: A non-negative integer.

    Raises:
        InputError: If ``n`` is not a positive integer, ``seed`` not a non-negative integer,
            or ``y`` not a vector of finite numeric labels.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"max_samples must be an integer >= 1 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0 (got {seed!r})")
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"subsampling needs a vector of class labels (N,); got shape {y.shape}")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise InputError(f"subsampling needs finite numeric class labels (got dtype {y.dtype}"
                         f"{'' if y.dtype.kind != 'f' else ' with NaN or infinite values'})")
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
            entries (when both or neither end has, the data is taken to be in the model's
            layout already).

    Returns:
        The images and a note saying what was changed (``None`` when nothing was).

    Raises:
        LoadError: On an unknown ``data_layout``, or one the shape contradicts (it names a
            layout whose channel axis has a size other than 1, 3 or 4 while the other end
            has one).
    """
    if not isinstance(data_layout, str) or data_layout.lower() not in ("auto", "nhwc", "nchw"):
        raise LoadError(f"data_layout must be 'auto', 'nhwc' or 'nchw' (got {data_layout!r})")
    x = np.asarray(x)
    if x.ndim != 4:
        return x, None
    layout = data_layout.lower()
    last, first = x.shape[-1] in CHANNEL_COUNTS, x.shape[1] in CHANNEL_COUNTS
    if layout == "nhwc" and first and not last:
        raise LoadError(f"data_layout 'nhwc' contradicts images of shape {tuple(x.shape[1:])}: "
                        f"their first axis ({x.shape[1]}) looks like the channels and their "
                        f"last ({x.shape[-1]}) does not; use 'nchw' or 'auto'")
    if layout == "nchw" and last and not first:
        raise LoadError(f"data_layout 'nchw' contradicts images of shape {tuple(x.shape[1:])}: "
                        f"their last axis ({x.shape[-1]}) looks like the channels and their "
                        f"first ({x.shape[1]}) does not; use 'nhwc' or 'auto'")
    if layout == "auto":
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
