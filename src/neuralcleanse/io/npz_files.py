"""Reading images and labels from ``.npz`` archives, safely.

An archive must be a zip of plain ``.npy`` arrays: arrays of Python objects are refused
(reading them could run code), and the size every array declares is checked against
:data:`MAX_NPZ_BYTES` and the memory available before anything is decompressed.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import LoadError, one_line

#: Key names tried, in order, when an ``.npz`` archive's image / label keys are not given.
IMAGE_KEYS = ("x", "x_val", "x_valid", "x_test", "images", "X", "inputs", "data", "x_train")
LABEL_KEYS = ("y", "y_val", "y_valid", "y_test", "labels", "Y", "targets", "target", "y_train")
#: Most bytes the arrays read from one ``.npz`` may declare (checked before reading them).
MAX_NPZ_BYTES = 8 * 2**30


def _pick(keys: list[str], given: str | None, candidates: tuple[str, ...], what: str,
          param: str, path: Path, required: bool = True) -> str | None:
    """The key given (it must exist), else the first candidate present.

    When none is present: a :class:`LoadError`, or ``None`` when the key is not ``required``.
    """
    if given is not None:
        if given not in keys:
            raise LoadError(f"{path.name} has no key {given!r} ({param}); its keys are: "
                            f"{', '.join(keys)}")
        return given
    for key in candidates:
        if key in keys:
            return key
    if not required:
        return None
    raise LoadError(f"cannot tell which key of {path.name} holds the {what} (keys: "
                    f"{', '.join(keys)}); give {param}")


def read_npz(path: Path, *, x_key: str | None, y_key: str | None,
             require_labels: bool = True
             ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Images, labels and facts for the report from an ``.npz`` archive.

    See :func:`~neuralcleanse.io.data_files.load_data` for the rules (keys detected or given,
    no arrays of Python objects, declared sizes checked before anything is decompressed).

    Args:
        path: The archive.
        x_key: Key of the images (detected when ``None``).
        y_key: Key of the labels (detected when ``None``).
        require_labels: When ``False``, an archive without a label key gives ``None`` as its
            labels (a ``y_key`` given must still exist), and an archive holding one array
            only (``numpy.savez(path, x)`` names it ``arr_0``) gives it as the images.

    Raises:
        LoadError: On a file that is not an ``.npz``, missing keys, unsafe or oversized arrays,
            or images and labels of different lengths.
    """
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
        if x_key is None and y_key is None and not require_labels and len(keys) == 1:
            x_key = keys[0]  # one array and no labels wanted: it can only be the images
        xk = str(_pick(keys, x_key, IMAGE_KEYS, "images", "x_key=", path))  # required: a key
        if y_key is None and xk.startswith(("x_", "X_")):
            paired = "y_" + xk[2:]
            y_key = paired if paired in keys else None
        yk = _pick(keys, y_key, LABEL_KEYS, "labels", "y_key=", path, required=require_labels)
        members = [xk] if yk is None or yk == xk else [xk, yk]
        declared = {key: _declared_bytes(archive.zip, key, path) for key in members}
        _check_size(sum(declared.values()), path)
        try:
            x = archive[xk]
            y = None if yk is None else archive[yk]
        except Exception as exc:  # noqa: BLE001 - a corrupt member (CRC, truncated data)
            raise LoadError(f"could not read {path.name}: {one_line(exc)}") from None
    for key, value in ((xk, x), (yk, y)):
        if value is not None and value.ndim == 0:
            raise LoadError(f"{path.name}: {key!r} holds a single value, not an array of "
                            f"{'images' if key == xk else 'labels'}")
    if y is not None and len(x) != len(y):
        raise LoadError(f"{path.name}: {xk!r} has {len(x)} images but {yk!r} has {len(y)} "
                        "labels")
    return x, y, {"source": str(path), "format": "npz", "x_key": xk, "y_key": yk,
                  "stored_shape": list(x.shape), "stored_dtype": str(x.dtype)}


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
