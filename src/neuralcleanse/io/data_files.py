"""Reading clean labelled data from files.

:func:`load_data` reads ``.npz`` archives (image and label keys detected or given) and folders of
images with one sub-folder per class. :func:`balanced_subsample` draws a seeded, class-balanced
subset, :func:`to_layout` moves the channel axis where the model wants it and
:func:`fingerprint` identifies the inputs of a scan (for resuming it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, LoadError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
#: Key names tried, in order, when an ``.npz`` archive's image / label keys are not given.
IMAGE_KEYS = ("x", "x_val", "x_valid", "x_test", "images", "X", "inputs", "data", "x_train")
LABEL_KEYS = ("y", "y_val", "y_valid", "y_test", "labels", "Y", "targets", "target", "y_train")
#: Most bytes the arrays read from one ``.npz`` may declare (checked before reading them).
MAX_NPZ_BYTES = 8 * 2**30
#: Sizes a channel axis can have in the layout checks (grey, RGB, RGBA).
CHANNEL_COUNTS = (1, 3, 4)


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

    An ``.npz`` archive must be a zip of plain ``.npy`` arrays: arrays of Python objects are
    refused (reading them could run code), and so is an archive whose arrays declare more than
    :data:`MAX_NPZ_BYTES` or more than the memory available (checked from the headers, before
    anything is decompressed). The arrays are returned as stored.

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
        return _load_image_folder(p, image_size=image_size, channels=channels)
    if p.suffix.lower() == ".npz":
        return _load_npz(p, x_key=x_key, y_key=y_key)
    raise LoadError(f"unsupported data {str(p)!r}: give an .npz file or a folder with one "
                    "sub-folder of images per class")


def _pick(keys: list[str], given: str | None, candidates: tuple[str, ...], what: str,
          param: str, path: Path) -> str:
    if given is not None:
        if given not in keys:
            raise LoadError(f"{path.name} has no key {given!r} ({param}); its keys are: "
                            f"{', '.join(keys)}")
        return given
    for key in candidates:
        if key in keys:
            return key
    raise LoadError(f"cannot tell which key of {path.name} holds the {what} (keys: "
                    f"{', '.join(keys)}); give {param}")


def _load_npz(path: Path, *, x_key: str | None, y_key: str | None) -> LoadedData:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic != b"PK":
        raise LoadError(f"{str(path)!r} is not an .npz archive (an .npz is a zip file of arrays, "
                        "as written by numpy.savez)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"could not read {str(path)!r} as .npz: {one_line(exc)}") from None
    with archive:
        keys = list(archive.files)
        xk = _pick(keys, x_key, IMAGE_KEYS, "images", "x_key=", path)
        if y_key is None and xk.startswith(("x_", "X_")):
            paired = "y_" + xk[2:]
            y_key = paired if paired in keys else None
        yk = _pick(keys, y_key, LABEL_KEYS, "labels", "y_key=", path)
        declared = {key: _declared_bytes(archive.zip, key, path) for key in {xk, yk}}
        _check_size(sum(declared.values()), path)
        try:
            x, y = archive[xk], archive[yk]
        except Exception as exc:  # noqa: BLE001 - a corrupt member (CRC, truncated data)
            raise LoadError(f"could not read {path.name}: {one_line(exc)}") from None
    for key, value in ((xk, x), (yk, y)):
        if value.ndim == 0:
            raise LoadError(f"{path.name}: {key!r} holds a single value, not an array of "
                            f"{'images' if key == xk else 'labels'}")
    if len(x) != len(y):
        raise LoadError(f"{path.name}: {xk!r} has {len(x)} images but {yk!r} has {len(y)} "
                        "labels")
    return LoadedData(x=x, y=y, info={"source": str(path), "format": "npz", "x_key": xk,
                                      "y_key": yk, "stored_shape": list(x.shape),
                                      "stored_dtype": str(x.dtype)})


def _declared_bytes(zf: zipfile.ZipFile, key: str, path: Path) -> int:
    """Bytes one array of an ``.npz`` will take once read, from its zip entry and .npy header.

    Nothing but the header is decompressed, so a small archive declaring a huge array (a zip
    bomb) is caught before any memory is taken. Arrays of Python objects are refused here.
    """
    names = zf.namelist()
    member = key if key in names else key + ".npy"
    info = zf.getinfo(member)
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:  # noqa: BLE001 - not a .npy member, or a corrupt header
        raise LoadError(f"{path.name}: {key!r} is not a readable .npy array: "
                        f"{one_line(exc)}") from None
    if dtype.hasobject:
        raise LoadError(f"{path.name}: {key!r} holds Python objects, which are never read "
                        "(unpickling them could run code); save plain numeric arrays")
    return max(int(info.file_size), math.prod(int(d) for d in shape) * int(dtype.itemsize))


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_size(nbytes: int, path: Path) -> None:
    """Refuse arrays larger than :data:`MAX_NPZ_BYTES` or than the memory available."""
    gib = 2**30
    if nbytes > MAX_NPZ_BYTES:
        raise LoadError(f"{path.name} declares arrays of {nbytes / gib:.3g} GiB, more than the "
                        f"{MAX_NPZ_BYTES / gib:g} GiB neuralcleanse reads from an .npz; a scan "
                        "needs a few thousand images: save a smaller sample")
    available = _available_memory()
    if available is not None and nbytes > available:
        raise LoadError(f"{path.name} declares arrays of {nbytes / gib:.3g} GiB but only "
                        f"{available / gib:.3g} GiB of memory is available; save a smaller "
                        "sample")


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
    """Label of each class folder name, and the rule that gave them (see :func:`load_data`)."""
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


def _load_image_folder(path: Path, *, image_size: tuple[int, int] | None,
                       channels: int | None) -> LoadedData:
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
    return LoadedData(x=x, y=y, info=info)


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
