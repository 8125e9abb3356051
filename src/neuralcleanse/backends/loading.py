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
* pickled full ``torch.nn.Module`` objects, only with ``trust_pickle=True``: unpickling runs code
  stored in the file.

Zip-based files are refused before they are read when their members would expand to far more
than the file's own size (:data:`MAX_ZIP_INFLATION_BYTES`).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import importlib
import io
import json
import logging
import os
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralcleanse.core.errors import InputError, LoadError, one_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAFETENSORS_SUFFIX = ".safetensors"

#: How far a zip-based model file may expand beyond its own size when read: the sum of its
#: members' declared uncompressed sizes minus the file's size. Frameworks store tensors
#: uncompressed or compress them a little; an archive declaring more is refused unread.
MAX_ZIP_INFLATION_BYTES = 4 * 2**30

#: How the opt-in is named in error messages (Python first, then the command line).
TRUST_HINT = "trust_pickle=True (--trust-pickle on the command line)"

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class LoadedModel:
    """A model read from a file.

    Attributes:
        model: The framework model (a ``torch.nn.Module`` or a Keras model).
        framework: ``"pytorch"`` or ``"keras"``.
        format: How the file was read: ``"keras"``, ``"torchscript"``, ``"torch.export"``,
            ``"state_dict"`` or ``"pickle"``.
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
            raise LoadError(f"--arch is for PyTorch state dicts; the Keras file {str(p)!r} "
                            "holds its own architecture")
        return _load_keras(p, trust=trust_pickle)
    return _load_torch(p, arch=arch, arch_kwargs=arch_kwargs or {}, trust_pickle=trust_pickle,
                       device=device or "cpu", members=members)


def _zip_members(path: Path) -> list[zipfile.ZipInfo] | None:
    """The members of a zip-based model file, or ``None`` when it is not a zip archive.

    PyTorch treats a file as a zip archive when it starts with a local file header, Keras when
    :func:`zipfile.is_zipfile` says so (``.keras`` files). The declared sizes are checked here,
    before any framework reads a member.
    """
    with open(path, "rb") as handle:
        starts_as_zip = handle.read(4) == _ZIP_MAGIC
    if not starts_as_zip and not (path.suffix.lower() == ".keras" and zipfile.is_zipfile(path)):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise LoadError(f"{str(path)!r} starts like a zip archive but its directory cannot be "
                        f"read ({one_line(exc)})") from None
    problem = _inflation_problem(members, path.stat().st_size)
    if problem:
        raise LoadError(f"refusing to read {str(path)!r}: {problem}")
    return members


def _inflation_problem(members: list[zipfile.ZipInfo], size: int) -> str | None:
    """Why a zip archive whose members declare these sizes is too big to expand, or ``None``."""
    declared = sum(max(member.file_size, 0) for member in members)
    if declared - size > MAX_ZIP_INFLATION_BYTES:
        return (f"its members would expand to {declared / 2**30:.1f} GiB from "
                f"{size / 2**20:.1f} MiB on disk (more than "
                f"{MAX_ZIP_INFLATION_BYTES / 2**30:g} GiB beyond the file's size)")
    return None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence what native code writes to file descriptor 2 (TensorFlow's start-up logs).

    Python-level errors are unaffected: they are raised as exceptions and reported after the
    descriptor is restored.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (e.g. captured by a test runner)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: Keras classes whose configuration carries code or names code to run: Python lambdas and
#: functions (``Lambda``, ``__lambda__``), TensorFlow functions by name (tf_keras's op layers),
#: pickled or external modules (``TorchModuleWrapper``, ``TFSMLayer``, JAX/Flax wrappers).
KERAS_CODE_CLASSES = frozenset({
    "Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda", "InstanceMethod",
    "InstanceProperty", "ClassMethod", "TorchModuleWrapper", "TFSMLayer", "JaxLayer",
    "FlaxLayer"})


def _load_keras(path: Path, *, trust: bool) -> LoadedModel:
    if not trust:
        found = _keras_code_in(_keras_architecture(path))
        if found:
            raise LoadError(f"the Keras model {str(path)!r} holds {found}, whose Python code "
                            "would run when the model is loaded; if you trust the file, load "
                            f"it with {TRUST_HINT}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter
    with _native_stderr_silenced():
        try:
            import keras
        except ImportError as exc:
            keras, missing = None, exc
        model, flavour, errors = None, "keras", []
        if keras is not None:
            try:
                model = keras.models.load_model(str(path), compile=False, safe_mode=not trust)
            except Exception as exc:  # noqa: BLE001 - reported with the fallback's failure
                if not trust and _is_safe_mode_refusal(exc):
                    # never retry what safe mode refused with a loader that has no safe mode
                    raise LoadError(f"Keras refused to load {str(path)!r} in safe mode "
                                    f"({one_line(exc)[:300]}); if you trust the file, load it "
                                    f"with {TRUST_HINT}") from None
                errors.append(f"keras: {one_line(exc)}")
        if model is None and path.suffix.lower() != ".keras":
            try:
                import tf_keras

                # safe_mode covers tf_keras's own format only; the architecture check above
                # is what keeps code out of legacy .h5 files
                model = tf_keras.models.load_model(str(path), compile=False,
                                                   safe_mode=not trust)
                flavour = "tf_keras"
            except Exception as exc:  # noqa: BLE001
                errors.append(f"tf_keras: {one_line(exc)}")
    if keras is None and model is None:
        raise LoadError(f"reading {path.name} needs Keras: pip install 'neuralcleanse[keras]' "
                        f"({missing})")
    if model is None:
        raise LoadError(f"could not read the Keras model {str(path)!r}: {'; '.join(errors)}")
    shape = getattr(model, "input_shape", None)
    input_shape = None
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape[1:]):
        input_shape = tuple(int(d) for d in shape[1:])
    return LoadedModel(model=model, framework="keras", format="keras", path=path,
                       input_shape=input_shape,
                       info={"path": str(path), "format": flavour})


def _is_safe_mode_refusal(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "safe_mode" in text or "arbitrary code" in text


def _keras_architecture(path: Path) -> Any:
    """The architecture stored in a Keras file, parsed as JSON, without deserialising it.

    ``.keras`` archives keep it in ``config.json``; legacy HDF5 files in the ``model_config``
    attribute (``None`` when absent: Keras then refuses the file itself).
    """
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                text: Any = archive.read("config.json")
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                text = handle.attrs.get("model_config")
            if text is None:
                return None
        if hasattr(text, "decode"):
            text = text.decode("utf-8")
        return json.loads(text)
    except ImportError as exc:
        raise LoadError(f"reading {path.name} needs h5py: pip install 'neuralcleanse[keras]' "
                        f"({exc})") from None
    except (KeyError, OSError, ValueError, RecursionError, zipfile.BadZipFile) as exc:
        raise LoadError(f"could not read the architecture of the Keras model {str(path)!r}: "
                        f"{one_line(exc)}") from None


def _keras_code_in(config: Any) -> str | None:
    """Describe the first part of a Keras architecture that carries code, or ``None``."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            name = item.get("class_name")
            if isinstance(name, str) and name.rpartition(">")[2] in KERAS_CODE_CLASSES:
                inner = item.get("config")
                layer = item.get("name") or (inner.get("name") if isinstance(inner, dict)
                                             else None)
                return f"a {name[:60]!r} layer" + (f" ({layer[:60]!r})" if isinstance(layer, str)
                                                   else "")
            if "function_type" in item:
                return "a layer with a Python function"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _load_torch(path: Path, *, arch: str | None, arch_kwargs: dict[str, Any],
                trust_pickle: bool, device: str,
                members: list[zipfile.ZipInfo] | None) -> LoadedModel:
    try:
        import torch
    except ImportError:
        raise LoadError(f"reading {path.name} needs PyTorch: pip install "
                        "'neuralcleanse[torch]'") from None
    target = _torch_device(torch, device, path)
    names = [member.filename for member in members or ()]
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        if arch is not None:
            raise LoadError(f"--arch is for state dicts; the torch.export archive {str(path)!r} "
                            "holds its own graph")
        return _load_exported(path, trust=trust_pickle)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        if arch is not None:
            raise LoadError(f"--arch is for state dicts; the TorchScript file {str(path)!r} "
                            "holds its own code")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's own notice
                # C++ loader: its unpickler resolves only tensor-rebuilding functions and the
                # TorchScript classes compiled from the archive; no Python object is imported
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read the TorchScript file {str(path)!r}: "
                            f"{one_line(exc)}") from None
        scripted.eval()
        for parameter in scripted.parameters():
            parameter.requires_grad_(False)
        if target.type != "cpu":
            scripted.to(target)
        return LoadedModel(model=_script_module_class()(scripted), framework="pytorch",
                           format="torchscript", path=path,
                           info={"path": str(path), "format": "torchscript"})
    if members is None and (path.suffix.lower() == SAFETENSORS_SUFFIX
                            or _looks_like_safetensors(path)):
        return _load_safetensors(path, arch=arch, arch_kwargs=arch_kwargs, target=target)

    try:
        with warnings.catch_warnings():
            # torch's notice about pickle protocols it did not write; the load decides anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if not trust_pickle:
            raise LoadError(
                f"{str(path)!r} is not a TorchScript file, a torch.export archive, a "
                f"safetensors file or a plain state dict ({one_line(exc)[:200]}). If it is a "
                f"pickled full model that you trust, load it with {TRUST_HINT}: this runs code "
                "stored in the file; otherwise save its state dict (or safetensors) and give "
                "--arch") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise LoadError(f"could not unpickle {str(path)!r}: {one_line(exc2)}") from None
    if isinstance(obj, torch.nn.Module):
        if arch is not None:
            raise LoadError(f"--arch is for state dicts; {str(path)!r} holds a full model")
        obj.eval()
        if target.type != "cpu":
            obj.to(target)
        return LoadedModel(model=obj, framework="pytorch", format="pickle", path=path,
                           info={"path": str(path), "format": "pickle",
                                 "model_class": type(obj).__name__})
    state = _state_dict_of(obj)
    if state is None:
        raise LoadError(f"{str(path)!r} holds a {type(obj).__name__}, not a model or a state "
                        "dict of tensors")
    if arch is None:
        raise LoadError(f"{str(path)!r} is a state dict (weights without the network): give "
                        "--arch module:factory naming a function that builds the network, e.g. "
                        "--arch neuralcleanse.backends.torch.architectures:mnist_badnet")
    model = _built_with(arch, arch_kwargs, state, path)
    model.to(target)
    return LoadedModel(model=model, framework="pytorch", format="state_dict", path=path,
                       info={"path": str(path), "format": "state_dict", "arch": arch,
                             "arch_kwargs": arch_kwargs})


def _torch_device(torch: Any, device: str, path: Path) -> Any:
    """The ``torch.device`` named ``device``, refused in one line when it cannot be used."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LoadError(f"cannot load {str(path)!r} on device {device!r}: not a PyTorch device "
                        "name (e.g. cpu, cuda, cuda:1)") from None
    if target.type == "cpu":
        return target
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LoadError(f"cannot load {str(path)!r} on device {device!r}: this PyTorch "
                            f"sees no CUDA device (PyTorch {torch.__version__}); use cpu")
        if target.index is not None and target.index >= count:
            raise LoadError(f"cannot load {str(path)!r} on device {device!r}: PyTorch sees "
                            f"{count} CUDA device(s), numbered from 0")
    try:
        torch.empty(0, device=target)
    except Exception as exc:  # noqa: BLE001 - e.g. mps or xpu absent from this build
        raise LoadError(f"cannot load {str(path)!r} on device {device!r}: the device is not "
                        f"available ({one_line(exc)[:200]})") from None
    return target


def _looks_like_safetensors(path: Path) -> bool:
    """Whether the file starts like a safetensors file: a little-endian header size, then JSON."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= header <= size - 8


def _load_safetensors(path: Path, *, arch: str | None, arch_kwargs: dict[str, Any],
                      target: Any) -> LoadedModel:
    """Read ``.safetensors`` weights (a JSON header and raw tensor bytes: nothing to run)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as exc:
        raise LoadError(f"reading {path.name} needs safetensors: pip install "
                        f"'neuralcleanse[torch]' ({exc})") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoadError(f"could not read the safetensors file {str(path)!r}: "
                        f"{one_line(exc)[:300]}") from None
    if arch is None:
        raise LoadError(f"{str(path)!r} is a safetensors file (weights without the network): "
                        "give --arch module:factory naming a function that builds the network, "
                        "e.g. --arch neuralcleanse.backends.torch.architectures:mnist_badnet")
    model = _built_with(arch, arch_kwargs, state, path)
    model.to(target)
    return LoadedModel(model=model, framework="pytorch", format="safetensors", path=path,
                       info={"path": str(path), "format": "safetensors", "arch": arch,
                             "arch_kwargs": arch_kwargs})


def _built_with(arch: str, arch_kwargs: dict[str, Any], state: dict[str, Any],
                path: Path) -> Any:
    """The network built by ``arch`` with the weights ``state`` (every key and shape must fit)."""
    model = build_architecture(arch, arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"the weights in {str(path)!r} do not fit --arch {arch}: "
                        f"{one_line(exc)[:400]}") from None
    model.eval()
    return model


def _state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The tensors of a state dict, also when nested in a training checkpoint."""
    import torch

    if not isinstance(obj, dict):
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor)
                                                     for v in inner.values()):
            return inner
    return None


def build_architecture(arch: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Call the factory named ``"package.module:function"`` and check it returns a module."""
    import torch

    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"--arch must look like package.module:factory (got {arch!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"--arch: cannot import module {module_name!r} ({one_line(exc)})"
                        ) from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise LoadError(f"--arch: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise LoadError(f"--arch: {arch!r} is not callable")
    try:
        model = factory(**(kwargs or {}))
    except TypeError as exc:
        raise LoadError(f"--arch: calling {arch} failed: {one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"--arch: {arch} returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model


def _load_exported(path: Path, *, trust: bool) -> LoadedModel:
    import torch

    with open(path, "rb") as handle, _quiet_loggers("torch.export", "torch._export"):
        if not trust:
            try:
                verify_export_archive(handle)
            except Exception as exc:  # noqa: BLE001 - whatever fails the check, refuse
                reason = str(exc) if isinstance(exc, UnverifiedArchive) else \
                    f"the check failed ({type(exc).__name__}: {one_line(exc)[:200]})"
                raise LoadError(f"the torch.export archive {str(path)!r} cannot be verified to "
                                f"run no code from the file: {reason}; if you trust the file, "
                                f"load it with {TRUST_HINT}") from None
            handle.seek(0)
        try:
            program = torch.export.load(handle)
            module = program.module()
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read the torch.export archive {str(path)!r}: "
                            f"{one_line(exc)[:400]}") from None
    return LoadedModel(model=wrap_exported(module), framework="pytorch",
                       format="torch.export", path=path,
                       info={"path": str(path), "format": "torch.export"})


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the named loggers (torch.export logs tracebacks as warnings) for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# -- torch.export archives ---------------------------------------------------------------------
# ``torch.export.load`` trusts its file: it unpickles weights, constants and example inputs with
# ``weights_only=False`` (and plain ``pickle.loads`` for opaque objects), loads AOTInductor
# shared libraries, passes every shape expression to ``sympy.sympify`` (which evaluates it as
# Python), ``exec``s the guards when the module is built, and resolves node targets by attribute
# lookup from the ``torch``, ``operator`` and ``math`` modules. ``verify_export_archive`` accepts
# only the subset that a plain exported network uses, reading every part the way torch reads it
# (through torch's own zip reader), and refuses anything else before torch sees the file.

class UnverifiedArchive(Exception):
    """A part of a ``torch.export`` archive lies outside the subset that can be verified."""


#: Globals a pickled tensor may name: the functions and storage types that rebuild tensors.
SAFE_PICKLE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    *(("torch", f"{kind}Storage") for kind in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble")),
})

#: Python functions a graph may call on sizes (pure arithmetic on integers).
_SYM_TARGETS = frozenset({
    *(f"_operator.{name}" for name in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "eq", "ne",
        "lt", "le", "gt", "ge", "and_", "or_", "not_")),
    *(f"torch.sym_{name}" for name in ("max", "min", "int", "float", "not", "ite")),
    "math.ceil", "math.floor", "math.trunc",
})
#: Built-in operators: ``torch.ops.<aten|prims>.<name>.<overload>``.
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
#: Operators that reach outside the tensors they are given (files, raw storage).
_REFUSED_OPS = frozenset({"from_file", "set_", "set", "_assert_async", "_print"})
#: Functions a shape expression may call (sympy constructors and torch's sympy functions;
#: ``Pow`` only with a small integer exponent, at most twice, so that no huge number is made).
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "FloorDiv", "ModularIndexing",
    "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "IntTrueDiv", "FloatTrueDiv"})
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]+")
#: sympy constants a shape expression may name besides its symbols.
_SYMPY_CONSTANTS = frozenset({"true", "false", "oo"})
#: Names, fully qualified names, dict keys: what every other string of the archive must be.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]*")
_SAFE_AST = (ast.Expression, ast.Load, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp,
             ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div,
             ast.FloorDiv, ast.Mod, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
#: Keys whose presence means custom (torchbind or opaque) objects or subgraphs.
_REFUSED_KEYS = frozenset({"as_custom_obj", "custom_obj", "class_fqn", "as_graph"})
_PT2_FIXED_RECORDS = frozenset({"archive_format", "archive_version", "byteorder",
                                ".data/version", ".data/serialization_id"})
_PT2_RECORD = re.compile(
    r"models/(?P<model>\w+)\.json"
    r"|data/weights/\w+_weights_config\.json|data/constants/\w+_constants_config\.json"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/\w+\.pt"
    r"|extra/[^/].*")


def verify_export_archive(source: Any) -> None:
    """Check that loading a ``torch.export`` archive runs no code stored in it.

    Args:
        source: The archive: a path or a binary file opened for reading.

    Raises:
        UnverifiedArchive: Naming the first part that lies outside the verified subset.
    """
    import torch

    try:
        reader = torch._C.PyTorchFileReader(source)
        records = set(reader.get_all_records())
    except Exception as exc:  # noqa: BLE001
        raise UnverifiedArchive(f"torch cannot read it as a zip archive ({one_line(exc)})"
                                ) from None
    if hasattr(source, "seek"):
        source.seek(0)
    with zipfile.ZipFile(source) as archive:  # what torch's fallback for old archives reads
        if "version" in archive.namelist():
            raise UnverifiedArchive("it has the layout of the old format, which torch "
                                    "unpickles without restriction")

    def text(name: str) -> str:
        try:
            return reader.get_record(name).decode("utf-8")
        except Exception as exc:  # noqa: BLE001
            raise UnverifiedArchive(f"record {name} cannot be read ({one_line(exc)})"
                                    ) from None

    def parsed(name: str) -> Any:
        try:
            return json.loads(text(name))
        except (ValueError, RecursionError):
            raise UnverifiedArchive(f"record {name} is not valid JSON") from None

    models = []
    for name in sorted(records):
        match = _PT2_RECORD.fullmatch(name)
        if name not in _PT2_FIXED_RECORDS and not match:
            raise UnverifiedArchive(f"it holds {name!r}, which is not part of a plain exported "
                                    "program (AOTInductor libraries, custom objects and "
                                    "legacy weight files are not verified)")
        if match and match["model"]:
            models.append(match["model"])
    if "archive_format" not in records or text("archive_format") != "pt2":
        raise UnverifiedArchive("its archive_format record is not 'pt2'")
    if not models:
        raise UnverifiedArchive("it holds no exported program")
    for model in models:
        where = f"models/{model}.json"
        _check_strings(parsed(where), where)
        for section, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            where = f"data/{section}/{model}_{section}_config.json"
            if where not in records:
                raise UnverifiedArchive(f"{where} is missing")
            config = parsed(where)
            _check_strings(config, where)
            entries = config.get("config") if isinstance(config, dict) else None
            if not isinstance(entries, dict):
                raise UnverifiedArchive(f"{where} has no 'config' table")
            for fqn, entry in entries.items():
                stored = entry.get("path_name") if isinstance(entry, dict) else None
                pickled = entry.get("use_pickle") if isinstance(entry, dict) else None
                if not isinstance(stored, str) or not re.fullmatch(prefix + r"\d+", stored) \
                        or not isinstance(pickled, bool):
                    raise UnverifiedArchive(f"{where}: entry {fqn!r} is not a plain tensor")
                record = f"data/{section}/{stored}"
                if record not in records:
                    raise UnverifiedArchive(f"{where}: {record} is missing")
                if pickled:
                    _check_pickled_tensors(reader.get_record(record), record)
        sample = f"data/sample_inputs/{model}.pt"
        if sample in records:
            _check_pickled_tensors(reader.get_record(sample), sample)


def _check_pickled_tensors(data: bytes, where: str) -> None:
    """Check a ``torch.save`` payload that torch will unpickle without restriction."""
    import torch

    if data[:4] != _ZIP_MAGIC:
        raise UnverifiedArchive(f"{where} is a raw pickle, not a torch.save archive")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            problem = _inflation_problem(inner.infolist(), len(data))
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = reader.get_all_records()
    except Exception as exc:  # noqa: BLE001
        raise UnverifiedArchive(f"{where} cannot be read ({one_line(exc)})") from None
    if problem:
        raise UnverifiedArchive(f"{where}: {problem}")
    if "constants.pkl" in records:  # torch.load would hand it to torch.jit.load
        raise UnverifiedArchive(f"{where} is a TorchScript archive")
    for record in records:
        if record.endswith(".pkl"):
            problem = pickle_globals_problem(reader.get_record(record))
            if problem:
                raise UnverifiedArchive(f"{where} {problem}")


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                         "BINSTRING", "SHORT_BINSTRING"})


def pickle_globals_problem(data: bytes) -> str | None:
    """Why unpickling ``data`` could call something other than tensor rebuilders, or ``None``.

    The pickle is read opcode by opcode (:func:`pickletools.genops`), never executed. Unpickling
    can call only what a ``GLOBAL``, ``STACK_GLOBAL`` or ``INST`` opcode imports (or an ``EXT``
    opcode names through the copyreg registry), so every import must be in
    :data:`SAFE_PICKLE_GLOBALS`. A ``STACK_GLOBAL`` whose module and name are not plain string
    pushes (or memo reads of them) just before it cannot be verified and is refused too.
    """
    memo: dict[Any, str | None] = {}
    pushed: list[str | None] = []  # what each opcode left on top of the stack, if a string
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or pushed[-1] is None or pushed[-2] is None:
                    return "imports an object it names indirectly"
                module, attr = pushed[-2], pushed[-1]
                del pushed[-2:]
            elif name.startswith("EXT"):
                return "imports an object through the extension registry"
            elif name in _STRING_OPS:
                pushed.append(arg if isinstance(arg, str) else None)
                continue
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
                continue
            elif name in ("PROTO", "FRAME", "STOP"):
                continue
            else:
                pushed.append(None)
                continue
            if (module, attr) not in SAFE_PICKLE_GLOBALS:
                return (f"imports {f'{module}.{attr}'[:80]!r}, which is not a "
                        "tensor-rebuilding function")
            pushed.append(None)
    except Exception as exc:  # noqa: BLE001 - malformed: refuse rather than guess
        return f"is not a well-formed pickle ({one_line(exc)})"
    return None


def _check_strings(doc: Any, where: str) -> None:
    """Check every string of an archive's JSON record by the field that holds it."""
    stack: list[tuple[Any, str | None, bool]] = [(doc, None, False)]
    while stack:
        value, key, in_metadata = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not _PLAIN_NAME.fullmatch(k):
                    raise UnverifiedArchive(f"{where} has a key {str(k)[:60]!r} that is not a "
                                            "plain name")
                if k in _REFUSED_KEYS and v is not None:
                    raise UnverifiedArchive(f"{where} holds {k} entries (custom objects or "
                                            "subgraphs)")
                stack.append((v, k, in_metadata or k in ("metadata", "stack_trace")))
        elif isinstance(value, list):
            stack.extend((item, key, in_metadata) for item in value)
        elif isinstance(value, str):
            _check_string(value, key, in_metadata, where)


def _check_string(value: str, key: str | None, in_metadata: bool, where: str) -> None:
    if key == "expr_str":
        _check_expression(value, where, guard=False)
    elif key in ("target", "as_operator"):
        _check_target(value, where)
    elif key == "guards_code":
        _check_expression(value, where, guard=True)
    elif key in ("in_spec", "out_spec"):
        _check_treespec(value, where)
    elif in_metadata or key == "torch_version":
        # kept as text in node metadata; never compiled (no control characters, so that it
        # cannot end a comment line in generated code either)
        if any((ord(c) < 32 and c not in "\n\t") or c in "\x7f\x85\u2028\u2029" for c in value):
            raise UnverifiedArchive(f"{where}: {key} text holds control characters")
    elif key in ("as_string", "as_strings"):
        if any(not " " <= c <= "~" or c in "\"'\\" for c in value):
            raise UnverifiedArchive(f"{where}: string argument {value[:60]!r} holds quotes, "
                                    "backslashes or control characters")
    elif not _PLAIN_NAME.fullmatch(value):
        raise UnverifiedArchive(f"{where}: {key} {value[:60]!r} is not a plain name")


def _check_target(target: str, where: str) -> None:
    """A node may call built-in tensor operators and integer arithmetic, nothing else."""
    import torch

    if target in _SYM_TARGETS:
        return
    match = _OP_TARGET.fullmatch(target)
    if match is None or match[2] in _REFUSED_OPS or match[2].startswith("_unsafe"):
        raise UnverifiedArchive(f"{where}: the graph calls {target[:80]!r}, which is not a "
                                "verified built-in tensor operator")
    packet = getattr(getattr(torch.ops, match[1]), match[2], None)
    op = getattr(packet, match[3], None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload):
        raise UnverifiedArchive(f"{where}: the graph calls {target[:80]!r}, which is not a "
                                "registered operator")


def _check_expression(text: str, where: str, *, guard: bool) -> None:
    """A shape expression (evaluated by sympy) or a guard (compiled by torch): arithmetic only.

    Shape expressions may call the sympy constructors of :data:`_SYMPY_CALLS` and name
    symbols (``s0``); guards may index the inputs (``L['x'].size()[0]``) and compare. No
    attribute access, no other names, no strings beyond symbol names and input keys.
    """
    what = "guard" if guard else "shape expression"
    if len(text) > 2000 or any(ord(c) < 32 for c in text):
        raise UnverifiedArchive(f"{where}: a {what} is too long or holds control characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise UnverifiedArchive(f"{where}: a {what} is not a Python expression") from None
    allowed: set[int] = set()  # nodes already accepted as parts of a call or an index
    powers = 0
    for node in ast.walk(tree):
        if id(node) in allowed or isinstance(node, _SAFE_AST):
            continue
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 10**30) \
                    or (isinstance(value, float) and abs(value) < 1e300):
                continue
        elif isinstance(node, ast.Name) and not guard and (
                node.id in _SYMPY_CONSTANTS or _is_free_symbol(node.id)):
            continue
        elif isinstance(node, ast.Call) and not guard and isinstance(node.func, ast.Name) \
                and node.func.id == "Pow" and len(node.args) == 2 and not node.keywords \
                and _small_integer(node.args[1]) and powers < 2:
            powers += 1
            allowed.add(id(node.func))
            continue
        elif isinstance(node, ast.Call) and not guard and isinstance(node.func, ast.Name) \
                and node.func.id in _SYMPY_CALLS:
            allowed.add(id(node.func))
            if node.func.id == "Symbol" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) \
                    and _SYMBOL_NAME.fullmatch(node.args[0].value):
                allowed.add(id(node.args[0]))
            for keyword in node.keywords:
                if keyword.arg is None or not re.fullmatch(r"[a-z_]+", keyword.arg) or \
                        not (isinstance(keyword.value, ast.Constant)
                             and isinstance(keyword.value.value, bool)):
                    break
                allowed.update((id(keyword), id(keyword.value)))
            else:
                continue
        elif guard and isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and (isinstance(node.slice.value, int) and not isinstance(node.slice.value, bool)
                     or isinstance(node.slice.value, str)
                     and node.slice.value.isidentifier()):
            allowed.add(id(node.slice))
            if isinstance(node.value, ast.Name) and node.value.id == "L":
                allowed.add(id(node.value))
            continue
        elif guard and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and not node.keywords and len(node.args) <= 1:
            method = node.func
            if (method.attr in ("size", "stride", "storage_offset", "dim", "numel")
                    or isinstance(method.value, ast.Name) and method.value.id == "math"
                    and method.attr in ("isnan", "isinf", "floor", "ceil", "trunc")):
                allowed.add(id(method))
                if isinstance(method.value, ast.Name) and method.value.id == "math":
                    allowed.add(id(method.value))
                continue
        raise UnverifiedArchive(f"{where}: a {what} holds {ast.unparse(node)[:60]!r}, which "
                                "is not plain arithmetic")


def _small_integer(node: ast.AST) -> bool:
    """Whether ``node`` is an integer literal between -8 and 8 (``3``, ``-1``, ``Integer(2)``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "Integer" and len(node.args) == 1 and not node.keywords:
        node = node.args[0]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value <= 8


@functools.cache
def _is_free_symbol(name: str) -> bool:
    """Whether sympy would read ``name`` as a new symbol (not one of its own or Python's)."""
    import sympy

    return bool(_SYMBOL_NAME.fullmatch(name)) and not hasattr(sympy, name) \
        and not hasattr(builtins, name)


#: Container types the input/output specification of a program may name.
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict",
                             "collections.OrderedDict"})


def _check_treespec(text: str, where: str) -> None:
    """The inputs/outputs specification: plain containers (its contexts may import modules)."""
    try:
        protocol, schema = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise UnverifiedArchive(f"{where}: an input/output specification is not valid JSON"
                                ) from None
    stack = [schema]
    while stack:
        spec = stack.pop()
        if not isinstance(spec, dict) or spec.get("type") not in _TREESPEC_TYPES or \
                not isinstance(spec.get("children_spec"), list):
            raise UnverifiedArchive(f"{where}: the inputs or outputs are not plain tuples, "
                                    "lists or dicts")
        context = spec.get("context")
        if context is not None:
            try:
                parsed = json.loads(context)
            except (ValueError, TypeError, RecursionError):
                raise UnverifiedArchive(f"{where}: a specification context is not JSON"
                                        ) from None
            if "{" in context or not _plain_json(parsed):
                raise UnverifiedArchive(f"{where}: a specification context names objects")
        stack.extend(spec["children_spec"])


def _plain_json(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_json(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


@functools.cache
def _exported_module_class() -> type:
    import torch

    class _ExportedProgramModule(torch.nn.Module):
        """Runs the module of a ``torch.export`` program.

        Exported graphs are fixed in the mode they were exported in and refuse ``train()`` /
        ``eval()``; this wrapper records the mode without forwarding it, so the scan (which
        switches to inference mode) can run them. The batch dimension must have been exported
        as dynamic.
        """

        def __init__(self, program_module: torch.nn.Module) -> None:
            super().__init__()
            self.program = program_module

        def train(self, mode: bool = True) -> _ExportedProgramModule:
            self.training = mode
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                return self.program(x)
            except Exception as exc:
                if "batch" in str(exc).lower() or "guard" in str(exc).lower() or \
                        "shape" in str(exc).lower():
                    raise InputError(
                        "the torch.export program rejected a batch of shape "
                        f"{tuple(x.shape)} ({one_line(exc)[:200]}); if only the batch size "
                        "differs from the export's, export it with a dynamic batch dimension, "
                        "e.g. dynamic_shapes=({0: torch.export.Dim('batch')},)") from exc
                raise

    return _ExportedProgramModule


@functools.cache
def _script_module_class() -> type:
    import torch

    class _ScriptedModule(torch.nn.Module):
        """Runs a TorchScript module, kept out of sight of module hooks.

        Script modules refuse forward hooks; the wrapper keeps the scripted module as a plain
        attribute, so the scan (which counts activation sizes with hooks) sees one opaque
        layer. Its weights are frozen: a TorchScript file can be scanned but not mitigated.
        """

        def __init__(self, scripted: torch.nn.Module) -> None:
            super().__init__()
            object.__setattr__(self, "scripted", scripted)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scripted(x)

    return _ScriptedModule


def wrap_exported(program_module: Any) -> Any:
    """Wrap the module of a ``torch.export`` program so that it can be scanned."""
    return _exported_module_class()(program_module)



