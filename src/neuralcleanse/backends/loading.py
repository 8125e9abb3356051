"""Reading model files.

Model files are untrusted input: :func:`load_model` never runs code stored in a file unless the
caller opts in with ``trust_pickle=True`` (see ``SECURITY.md`` for the threat model). It chooses
the loader from the file's content (and, for Keras, its suffix):

* Keras ``.keras`` / ``.h5`` / ``.hdf5`` files, through ``keras`` in safe mode (``tf_keras`` as a
  fallback for legacy ``.h5`` files); the architecture is checked for layers that carry Python
  code (``Lambda`` and the like) before anything is deserialised;
* TorchScript archives (``torch.jit.save``): TorchScript, not Python;
* ``torch.export`` archives (``torch.export.save``, usually ``.pt2``): the archive is verified
  first (no unrestricted pickles, only built-in tensor operators, no Python code in its shape
  expressions or guards); an archive outside that subset needs the opt-in;
* ``.safetensors`` weights (recommended) and PyTorch state dicts (``torch.load`` with
  ``weights_only=True``), with ``arch="package.module:factory"`` naming a function that builds the
  network (for example ``neuralcleanse.backends.torch.architectures:mnist_badnet``);
* ONNX models (``.onnx``, or recognised by their first bytes), converted into PyTorch modules
  by ``onnx2torch`` (:mod:`neuralcleanse.backends.torch.onnx_loading`): standard operators
  only, external data only from the model's folder;
* pickled full ``torch.nn.Module`` objects, only with ``trust_pickle=True``: unpickling runs code
  stored in the file.

Zip-based files are refused before they are read when their members would expand to far more
than the file's own size (:data:`MAX_ZIP_INFLATION_BYTES`).

This module imports no framework: it recognises the file and hands it to the loader of its
framework, :mod:`neuralcleanse.backends.torch.loading` (which verifies ``torch.export`` archives
with :mod:`neuralcleanse.backends.torch.export_check`) or
:mod:`neuralcleanse.backends.tensorflow.loading`, imported when a file needs it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralcleanse.core.errors import LoadError, one_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAFETENSORS_SUFFIX = ".safetensors"
ONNX_SUFFIX = ".onnx"

#: How far a zip-based model file may expand beyond its own size when read: the sum of its
#: members' declared uncompressed sizes minus the file's size. Frameworks store tensors
#: uncompressed or compress them a little; an archive declaring more is refused unread.
MAX_ZIP_INFLATION_BYTES = 4 * 2**30

#: How the opt-in is named in error messages (the parameter of :func:`load_model`).
TRUST_HINT = "trust_pickle=True"

#: How a zip archive's first local file header starts (what PyTorch checks for).
ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class LoadedModel:
    """A model read from a file.

    Attributes:
        model: The framework model (a ``torch.nn.Module`` or a Keras model).
        framework: ``"pytorch"`` or ``"keras"``.
        format: How the file was read: ``"keras"``, ``"torchscript"``, ``"torch.export"``,
            ``"state_dict"``, ``"safetensors"``, ``"onnx"`` or ``"pickle"``.
        path: The file.
        input_shape: Shape of one input when the file records it (Keras), else ``None``.
        info: Facts echoed in the report (format, architecture, ...).
    """

    model: Any
    framework: str
    format: str
    path: Path
    input_shape: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def channels_first_default(self) -> bool:
        """Whether the model reads channels-first images.

        A Keras model reads its own data format, whichever framework runs it (channels last
        unless its layers say otherwise); PyTorch models read channels first.
        """
        if self.framework == "keras":
            from neuralcleanse.backends.base import keras_data_format

            return keras_data_format(self.model)[0] == "channels_first"
        return self.framework == "pytorch"


def load_model(path: str | Path, *, arch: str | None = None,
               arch_kwargs: dict[str, Any] | None = None, trust_pickle: bool = False,
               device: str | None = None) -> LoadedModel:
    """Read a model file, choosing the loader from the file's content and suffix.

    Nothing stored in the file is run while it is read, whatever its name, unless
    ``trust_pickle`` is true.

    Args:
        path: The model file.
        arch: ``"module:factory"``: a function that builds the network whose weights ``path``
            holds (needed for state dicts and safetensors files only). It is imported from
            the caller's environment, never from the file.
        arch_kwargs: Keyword arguments for the factory.
        trust_pickle: Trust the file: allow formats that run code stored in it (a pickled
            full ``torch.nn.Module``, a Keras ``Lambda`` layer, a ``torch.export`` archive
            outside the verified subset). Only use it for files you trust.
        device: Where to put a PyTorch model (default CPU). Files are read on the CPU and the
            model is moved afterwards; an unavailable device is refused first.

    Returns:
        The :class:`LoadedModel`.

    Raises:
        LoadError: When the file is missing, unreadable, refused as unsafe, or needs an
            argument it was not given; when the device is not available.
    """
    p = Path(path)
    if not p.exists():
        raise LoadError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise LoadError(f"model path {str(p)!r} is a directory; give the model file (a Keras "
                        "SavedModel directory is not supported: save the model as .keras)")
    try:
        members = _zip_members(p)
    except OSError as exc:
        raise LoadError(f"cannot read the model file {str(p)!r}: {one_line(exc)}") from None
    if p.suffix.lower() in KERAS_SUFFIXES:
        if arch is not None:
            raise LoadError(f"arch= is for PyTorch state dicts; the Keras file {str(p)!r} "
                            "holds its own architecture")
        from neuralcleanse.backends.tensorflow.loading import load_keras

        return load_keras(p, trust=trust_pickle)
    try:
        from neuralcleanse.backends.torch.loading import load_torch
    except ImportError as exc:
        raise LoadError(f"reading {p.name} needs PyTorch: pip install 'neuralcleanse[torch]' "
                        f"({one_line(exc)})") from None
    return load_torch(p, kind=torch_file_kind(p, members), arch=arch,
                      arch_kwargs=arch_kwargs or {}, trust_pickle=trust_pickle,
                      device=device or "cpu")


def torch_file_kind(path: Path, members: list[zipfile.ZipInfo] | None) -> str:
    """What a PyTorch model file holds, recognised from its content (its name aside).

    Args:
        path: The file.
        members: Its zip members (from the checked zip directory), or ``None`` when it is not
            a zip archive.

    Returns:
        ``"torch.export"`` (a ``torch.export.save`` archive), ``"torchscript"``
        (``torch.jit.save``), ``"safetensors"``, ``"onnx"`` (an ONNX model), or
        ``"torch.load"`` for anything else (a state dict or a pickle, which ``torch.load``
        decides on).
    """
    names = [member.filename for member in members or ()]
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        return "torch.export"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if members is None and (path.suffix.lower() == SAFETENSORS_SUFFIX
                            or _looks_like_safetensors(path)):
        return "safetensors"
    if members is None and (path.suffix.lower() == ONNX_SUFFIX or _looks_like_onnx(path)):
        return "onnx"
    return "torch.load"


def _looks_like_onnx(path: Path) -> bool:
    """Whether the file starts like an ONNX model: its ``ir_version`` field, a small number.

    A ``torch.save`` pickle starts with ``0x80``, a zip archive with ``PK``; an ONNX
    ``ModelProto`` with the tag of field 1 (``0x08``) and the IR version (1 to 127).
    """
    with open(path, "rb") as handle:
        head = handle.read(3)
    return len(head) == 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in (
        0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x40, 0x42)


def _zip_members(path: Path) -> list[zipfile.ZipInfo] | None:
    """The members of a zip-based model file, or ``None`` when it is not a zip archive.

    PyTorch treats a file as a zip archive when it starts with a local file header, Keras when
    :func:`zipfile.is_zipfile` says so (``.keras`` files). The declared sizes are checked here,
    before any framework reads a member.
    """
    with open(path, "rb") as handle:
        starts_as_zip = handle.read(4) == ZIP_MAGIC
    if not starts_as_zip and not (path.suffix.lower() == ".keras" and zipfile.is_zipfile(path)):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise LoadError(f"{str(path)!r} starts like a zip archive but its directory cannot be "
                        f"read ({one_line(exc)})") from None
    problem = inflation_problem(members, path.stat().st_size)
    if problem:
        raise LoadError(f"refusing to read {str(path)!r}: {problem}")
    return members


def inflation_problem(members: list[zipfile.ZipInfo], size: int) -> str | None:
    """Why a zip archive whose members declare these sizes is too big to expand, or ``None``."""
    declared = sum(max(member.file_size, 0) for member in members)
    if declared - size > MAX_ZIP_INFLATION_BYTES:
        return (f"its members would expand to {declared / 2**30:.1f} GiB from "
                f"{size / 2**20:.1f} MiB on disk (more than "
                f"{MAX_ZIP_INFLATION_BYTES / 2**30:g} GiB beyond the file's size)")
    return None


def _looks_like_safetensors(path: Path) -> bool:
    """Whether the file starts like a safetensors file: a little-endian header size, then JSON."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= header <= size - 8


#: Names that moved to the framework folders, still importable from here (imported on first
#: use, so that importing this module imports no framework).
_MOVED = {
    "build_architecture": "torch.loading",
    "wrap_exported": "torch.loading",
    "verify_export_archive": "torch.export_check",
    "pickle_globals_problem": "torch.export_check",
    "UnverifiedArchive": "torch.export_check",
    "SAFE_PICKLE_GLOBALS": "torch.export_check",
    "KERAS_CODE_CLASSES": "tensorflow.loading",
}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        from importlib import import_module

        return getattr(import_module(f"neuralcleanse.backends.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
