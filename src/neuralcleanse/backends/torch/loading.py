"""Reading PyTorch model files.

:func:`load_torch` reads the file kinds that :func:`neuralcleanse.backends.loading.load_model`
recognised: TorchScript archives (through PyTorch's C++ loader, which imports no Python
object), ``torch.export`` archives (verified first by
:mod:`neuralcleanse.backends.torch.export_check` unless the caller trusts the file),
``.safetensors`` weights and state dicts (``torch.load`` with ``weights_only=True``) with the
network built by ``arch``, and pickled full modules (only when the caller trusts the file).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from neuralcleanse.backends.loading import TRUST_HINT, LoadedModel
from neuralcleanse.backends.torch.export_check import UnverifiedArchive, verify_export_archive
from neuralcleanse.core.errors import InputError, LoadError, one_line

#: What to give when a file holds weights without the network.
ARCH_HINT = ("give arch='package.module:factory' naming a function that builds the network, "
             "e.g. arch='neuralcleanse.backends.torch.architectures:mnist_badnet'")


def load_torch(path: Path, *, kind: str, arch: str | None, arch_kwargs: dict[str, Any],
               trust_pickle: bool, device: str) -> LoadedModel:
    """Read a PyTorch model file of the given kind.

    Args:
        path: The model file.
        kind: What the file holds, as recognised from its content: ``"torch.export"``,
            ``"torchscript"``, ``"safetensors"``, ``"onnx"`` or ``"torch.load"`` (a state
            dict, or a pickled full module).
        arch: ``"module:factory"`` building the network (state dicts and safetensors only).
        arch_kwargs: Keyword arguments for the factory.
        trust_pickle: Allow what runs code stored in the file.
        device: Where to put the model; refused first when PyTorch cannot use it.

    Returns:
        The :class:`LoadedModel`.

    Raises:
        LoadError: When the file cannot be read, is refused as unsafe, or needs (or does not
            take) ``arch``; when the device is not available.
    """
    target = _torch_device(device, path)
    if kind == "torch.export":
        if arch is not None:
            raise LoadError(f"arch= is for state dicts; the torch.export archive {str(path)!r} "
                            "holds its own graph")
        return _load_exported(path, trust=trust_pickle)
    if kind == "torchscript":
        if arch is not None:
            raise LoadError(f"arch= is for state dicts; the TorchScript file {str(path)!r} "
                            "holds its own code")
        return _load_scripted(path, target)
    if kind == "onnx":
        if arch is not None:
            raise LoadError(f"arch= is for state dicts; the ONNX file {str(path)!r} holds its "
                            "own graph")
        from neuralcleanse.backends.torch.onnx_loading import load_onnx

        return load_onnx(path, target)
    if kind == "safetensors":
        return _load_safetensors(path, arch=arch, arch_kwargs=arch_kwargs, target=target)
    return _load_pickled(path, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle,
                         target=target)


def _load_scripted(path: Path, target: torch.device) -> LoadedModel:
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
    return LoadedModel(model=_ScriptedModule(scripted), framework="pytorch",
                       format="torchscript", path=path,
                       info={"path": str(path), "format": "torchscript"})


def _load_pickled(path: Path, *, arch: str | None, arch_kwargs: dict[str, Any],
                  trust_pickle: bool, target: torch.device) -> LoadedModel:
    """Read a ``torch.save`` file: a state dict, or (trusted only) a pickled full module."""
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
                "arch=") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise LoadError(f"could not unpickle {str(path)!r}: {one_line(exc2)}") from None
    if isinstance(obj, torch.nn.Module):
        if arch is not None:
            raise LoadError(f"arch= is for state dicts; {str(path)!r} holds a full model")
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
        raise LoadError(f"{str(path)!r} is a state dict (weights without the network): "
                        f"{ARCH_HINT}")
    model = _built_with(arch, arch_kwargs, state, path)
    model.to(target)
    return LoadedModel(model=model, framework="pytorch", format="state_dict", path=path,
                       info={"path": str(path), "format": "state_dict", "arch": arch,
                             "arch_kwargs": arch_kwargs})


def _torch_device(device: str, path: Path) -> torch.device:
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


def _load_safetensors(path: Path, *, arch: str | None, arch_kwargs: dict[str, Any],
                      target: torch.device) -> LoadedModel:
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
                        f"{ARCH_HINT}")
    model = _built_with(arch, arch_kwargs, state, path)
    model.to(target)
    return LoadedModel(model=model, framework="pytorch", format="safetensors", path=path,
                       info={"path": str(path), "format": "safetensors", "arch": arch,
                             "arch_kwargs": arch_kwargs})


def _built_with(arch: str, arch_kwargs: dict[str, Any], state: dict[str, Any],
                path: Path) -> torch.nn.Module:
    """The network built by ``arch`` with the weights ``state`` (every key and shape must fit)."""
    model = build_architecture(arch, arch_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LoadError(f"the weights in {str(path)!r} do not fit the network built by "
                        f"arch={arch!r}: {one_line(exc)[:400]}") from None
    model.eval()
    return model


def _state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The tensors of a state dict, also when nested in a training checkpoint."""
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


def build_architecture(arch: str, kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Call the factory named ``"package.module:function"`` and check it returns a module.

    Args:
        arch: The factory, imported from the caller's environment.
        kwargs: Keyword arguments for the factory.

    Returns:
        The module the factory built.

    Raises:
        LoadError: When ``arch`` is malformed, cannot be imported or called, or does not
            build a ``torch.nn.Module``.
    """
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"arch= must look like 'package.module:factory' (got {arch!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"arch={arch!r}: cannot import module {module_name!r} "
                        f"({one_line(exc)})") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise LoadError(f"arch={arch!r}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise LoadError(f"arch={arch!r} is not callable")
    kwargs = kwargs or {}
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        given = repr(kwargs)
        raise LoadError(f"arch={arch!r}: calling it with arch_kwargs={given[:200]} failed: "
                        f"{one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"arch={arch!r} returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model


def _load_exported(path: Path, *, trust: bool) -> LoadedModel:
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


def wrap_exported(program_module: torch.nn.Module) -> torch.nn.Module:
    """Wrap the module of a ``torch.export`` program so that it can be scanned."""
    return _ExportedProgramModule(program_module)
