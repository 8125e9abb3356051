"""Reading model files.

:func:`load_model` chooses the loader from the file's suffix and content:

* Keras ``.keras`` / ``.h5`` / ``.hdf5`` files, through ``keras`` (``tf_keras`` as a fallback for
  legacy ``.h5`` files);
* TorchScript archives (``torch.jit.save``), recognised by their content whatever the suffix;
* ``torch.export`` archives (``.pt2``, ``torch.export.save``);
* PyTorch state dicts, with ``arch="package.module:factory"`` naming a function that builds the
  network (for example ``neuralcleanse.architectures:mnist_badnet``);
* pickled full ``torch.nn.Module`` objects, only with ``trust_pickle=True``: unpickling runs code
  stored in the file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, LoadError, one_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


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
            from .backends.base import keras_data_format

            return keras_data_format(self.model)[0] == "channels_first"
        return self.framework == "pytorch"



def load_model(path: str | Path, *, arch: str | None = None,
               arch_kwargs: dict[str, Any] | None = None, trust_pickle: bool = False,
               device: str | None = None) -> LoadedModel:
    """Read a model file, choosing the loader from the file's suffix and content.

    Args:
        path: The model file.
        arch: ``"module:factory"``: a function that builds the network whose state dict
            ``path`` holds (needed for state dicts only).
        arch_kwargs: Keyword arguments for the factory.
        trust_pickle: Allow unpickling a full ``torch.nn.Module``. Unpickling runs code stored
            in the file: only use it for files you trust.
        device: Where to load PyTorch tensors (default CPU).

    Returns:
        The :class:`LoadedModel`.

    Raises:
        LoadError: When the file is missing, unreadable, or needs a flag it was not given.
    """
    p = Path(path)
    if not p.exists():
        raise LoadError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise LoadError(f"model path {str(p)!r} is a directory; give the model file (a Keras "
                        "SavedModel directory is not supported: save the model as .keras)")
    if p.suffix.lower() in KERAS_SUFFIXES:
        if arch is not None:
            raise LoadError("--arch is for PyTorch state dicts; a Keras file holds its own "
                            "architecture")
        return _load_keras(p)
    return _load_torch(p, arch=arch, arch_kwargs=arch_kwargs or {}, trust_pickle=trust_pickle,
                       device=device or "cpu")


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


def _load_keras(path: Path) -> LoadedModel:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter
    with _native_stderr_silenced():
        try:
            import keras
        except ImportError as exc:
            keras, missing = None, exc
        model, flavour, errors = None, "keras", []
        if keras is not None:
            try:
                model = keras.models.load_model(str(path), compile=False)
            except Exception as exc:  # noqa: BLE001 - reported with the fallback's failure
                errors.append(f"keras: {one_line(exc)}")
        if model is None and path.suffix.lower() != ".keras":
            try:
                import tf_keras

                model = tf_keras.models.load_model(str(path), compile=False)
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


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _load_torch(path: Path, *, arch: str | None, arch_kwargs: dict[str, Any],
                trust_pickle: bool, device: str) -> LoadedModel:
    try:
        import torch
    except ImportError:
        raise LoadError(f"reading {path.name} needs PyTorch: pip install "
                        "'neuralcleanse[torch]'") from None
    names = _zip_names(path)
    if any(n.endswith("/archive_format") for n in names) or path.suffix.lower() == ".pt2":
        if arch is not None:
            raise LoadError("--arch is for state dicts; a torch.export archive holds its own "
                            "graph")
        return _load_exported(path)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        if arch is not None:
            raise LoadError("--arch is for state dicts; a TorchScript file holds its own code")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's own notice
                scripted = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read the TorchScript file {str(path)!r}: "
                            f"{one_line(exc)}") from None
        scripted.eval()
        for parameter in scripted.parameters():
            parameter.requires_grad_(False)
        return LoadedModel(model=_script_module_class()(scripted), framework="pytorch",
                           format="torchscript", path=path,
                           info={"path": str(path), "format": "torchscript"})

    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if not trust_pickle:
            raise LoadError(
                f"{str(path)!r} is not a TorchScript file, a torch.export archive or a plain "
                f"state dict ({one_line(exc)[:200]}). If it is a pickled full model that you "
                "trust, pass --trust-pickle (this runs code stored in the file); otherwise "
                "save the state dict and use --arch") from None
        try:
            obj = torch.load(str(path), map_location=device, weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise LoadError(f"could not unpickle {str(path)!r}: {one_line(exc2)}") from None
    if isinstance(obj, torch.nn.Module):
        if arch is not None:
            raise LoadError("--arch is for state dicts; this file holds a full model")
        obj.eval()
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
                        "--arch neuralcleanse.architectures:mnist_badnet")
    model = build_architecture(arch, arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"the weights in {str(path)!r} do not fit --arch {arch}: "
                        f"{one_line(exc)[:400]}") from None
    model.to(device)
    model.eval()
    return LoadedModel(model=model, framework="pytorch", format="state_dict", path=path,
                       info={"path": str(path), "format": "state_dict", "arch": arch,
                             "arch_kwargs": arch_kwargs})


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


def _load_exported(path: Path) -> LoadedModel:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"could not read the torch.export archive {str(path)!r}: "
                        f"{one_line(exc)}") from None
    return LoadedModel(model=wrap_exported(program.module()), framework="pytorch",
                       format="torch.export", path=path,
                       info={"path": str(path), "format": "torch.export"})


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
                        f"{tuple(x.shape)}: export it with a dynamic batch dimension, e.g. "
                        "dynamic_shapes=({0: torch.export.Dim('batch')},)") from exc
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



