"""Reading ONNX models into PyTorch modules through ``onnx2torch``.

An ONNX file is a protobuf message: a graph of standard operators and its tensors. ``onnx``
parses it (no code is imported or run) and ``onnx2torch`` builds a ``torch.fx`` module with
one torch module per operator, so the scan differentiates through it as through any PyTorch
model. Before the conversion:

* external tensor data must lie in files inside the model file's folder (a reference that
  leaves it, or an absolute path, is refused);
* only operators of the standard domain are accepted (custom operators are refused);
* every node is renamed ``node_<i>``: ``torch.fx`` writes the module names into the Python
  source it generates for the converted module, so names taken from the file would reach
  generated code.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from neuralcleanse.backends.loading import LoadedModel
from neuralcleanse.core.errors import InputError, LoadError, one_line

#: The operator domains that are converted (the standard ONNX operators).
STANDARD_DOMAINS = ("", "ai.onnx")

INSTALL_HINT = "pip install onnx onnx2torch"


def load_onnx(path: Path, target: torch.device) -> LoadedModel:
    """Read an ONNX model file into a ``torch.nn.Module`` on ``target``.

    Raises:
        LoadError: When ``onnx``/``onnx2torch`` are missing, the file is no ONNX model, it
            refers to data outside its folder, uses custom operators or takes several inputs,
            or the conversion fails.
    """
    try:
        import onnx
        from onnx import external_data_helper
    except ImportError as exc:
        raise LoadError(f"reading the ONNX file {path.name} needs onnx and onnx2torch: "
                        f"{INSTALL_HINT} ({one_line(exc)})") from None
    convert = _onnx2torch_convert(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a protobuf decode error, an unreadable file
        raise LoadError(f"could not read {str(path)!r} as an ONNX model: "
                        f"{one_line(exc)[:300]}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise LoadError(f"{str(path)!r} holds no ONNX graph")
    folder = path.resolve().parent
    external = False
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external = True
            _check_external(tensor, folder, path)
    domains = sorted({node.domain for node in _nodes(proto.graph)} - set(STANDARD_DOMAINS))
    if domains or proto.functions:
        what = f"operators of the domain(s) {domains}" if domains else "model-local functions"
        raise LoadError(f"the ONNX model {str(path)!r} uses {what}, which cannot be converted "
                        "to PyTorch; export it with standard ONNX operators only")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise LoadError(f"the ONNX model {str(path)!r} takes {len(inputs)} inputs "
                        f"({inputs[:4]}); a classifier to scan takes one: the images")
    if external:
        try:
            external_data_helper.load_external_data_for_model(proto, str(folder))
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"could not read the external data of {str(path)!r}: "
                            f"{one_line(exc)[:300]}") from None
    for i, node in enumerate(proto.graph.node):
        node.name = f"node_{i}"
    try:
        module = convert(proto)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an operator or version onnx2torch lacks
        raise LoadError(f"could not convert the ONNX model {str(path)!r} to PyTorch: "
                        f"{type(exc).__name__}: {one_line(exc)[:300]}") from None
    module.eval()
    module.to(target)
    info = {"path": str(path), "format": "onnx",
            "opset": max((o.version for o in proto.opset_import
                          if o.domain in STANDARD_DOMAINS), default=None),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip()}
    return LoadedModel(model=module, framework="pytorch", format="onnx", path=path,
                       input_shape=_input_shape(proto.graph, inputs[0]), info=info)


def _check_external(tensor: Any, folder: Path, path: Path) -> None:
    """Refuse external tensor data that is not in a file inside ``folder``."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    resolved = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not resolved.is_relative_to(folder) \
            or resolved == folder:
        raise LoadError(f"the ONNX model {str(path)!r} refers to external data at "
                        f"{location!r}, outside its folder; keep the data files beside the "
                        "model file")


def _nodes(graph: Any) -> Iterator[Any]:
    """The nodes of a graph and of its subgraphs (e.g. the branches of ``If``)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _nodes(sub)


def _tensors(graph: Any) -> Iterator[Any]:
    """The tensors of a graph: initializers, tensor attributes, and those of subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(sub)


def _input_shape(graph: Any, name: str) -> tuple[int, ...] | None:
    """The shape of one input (batch dimension left out) when the graph fixes it."""
    for value in graph.input:
        if value.name == name and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            sizes = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
            if len(dims) in (3, 4) and all(s and s > 0 for s in sizes):
                return tuple(int(s) for s in sizes)  # type: ignore[arg-type]
    return None


def _onnx2torch_convert(path: Path) -> Callable[[Any], torch.nn.Module]:
    """``onnx2torch.convert``, also where torchvision is not installed.

    onnx2torch imports torchvision for two detection operators only (``NonMaxSuppression``
    and ``RoiAlign``, never found in an image classifier). Without torchvision it is imported
    with a stand-in that makes those operators fail with a clear error; the stand-in is
    removed from ``sys.modules`` right after, so nothing else sees it.
    """
    try:
        from onnx2torch import convert
        return convert
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise LoadError(f"reading the ONNX file {path.name} needs onnx and onnx2torch: "
                            f"{INSTALL_HINT} ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise LoadError(f"reading the ONNX file {path.name} needs onnx2torch, which failed to "
                        f"import: {type(exc).__name__}: {one_line(exc)[:200]}") from None
    for name in [n for n in sys.modules if n == "onnx2torch" or n.startswith("onnx2torch.")]:
        del sys.modules[name]

    def needs_torchvision(*_args: Any, **_kwargs: Any) -> Any:
        raise InputError("this ONNX model uses NonMaxSuppression or RoiAlign, which need "
                         "torchvision: pip install torchvision")

    stand_in = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = needs_torchvision  # type: ignore[attr-defined]
    stand_in.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    try:
        from onnx2torch import convert
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"reading the ONNX file {path.name} needs onnx2torch, which failed to "
                        f"import: {type(exc).__name__}: {one_line(exc)[:200]}") from None
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return convert
