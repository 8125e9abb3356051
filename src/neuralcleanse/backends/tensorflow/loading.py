"""Reading Keras model files (``.keras``, legacy ``.h5`` / ``.hdf5``).

Keras files are read by ``keras`` in safe mode, with ``tf_keras`` as a fallback for legacy
``.h5`` files. Unless the caller trusts the file, its architecture is read as JSON first and
refused when it holds layers that carry Python code (``Lambda`` and the like), before anything
is deserialised. ``keras`` is imported only when a file is read (after TensorFlow's start-up
logging is turned down), so importing this module imports no framework; a Keras running on
PyTorch reads the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neuralcleanse.backends.loading import TRUST_HINT, LoadedModel
from neuralcleanse.core.errors import LoadError, one_line


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


def load_keras(path: Path, *, trust: bool) -> LoadedModel:
    """Read a Keras model file.

    Args:
        path: The ``.keras``, ``.h5`` or ``.hdf5`` file.
        trust: Allow layers that carry Python code (and turn safe mode off).

    Returns:
        The :class:`LoadedModel`, with the input shape the file records.

    Raises:
        LoadError: When the file holds code and is not trusted, or cannot be read.
    """
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
