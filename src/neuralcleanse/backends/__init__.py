"""Framework backends behind one interface, and the dispatcher that picks one for a model."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import InputTypeError
from .base import Classifier, StepStats, TriggerSession

__all__ = ["Classifier", "StepStats", "TriggerSession", "wrap_model"]


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_keras_model(model: Any) -> bool:
    for name in ("keras", "tf_keras", "tensorflow"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        try:
            base = mod.keras.Model if name == "tensorflow" else mod.Model
        except AttributeError:
            continue
        if isinstance(model, base):
            return True
    return False


def wrap_model(model: Any, **options: Any) -> Classifier:
    """Wrap a framework model in the backend that handles it.

    Args:
        model: A ``torch.nn.Module`` (a Keras 3 model on the torch backend is one), a Keras 3
            model on the TensorFlow backend, a ``tf.keras``/``tf_keras`` model, or an already
            wrapped :class:`Classifier` (returned as is).
        **options: Backend options (``input_shape``, ``output``, ``channels_first``,
            ``clip_values``, ``preprocessing``, ...).

    Raises:
        TypeError: If no backend supports the model.
    """
    if isinstance(model, Classifier):
        return model
    if _is_torch_module(model):
        from .pytorch import TorchClassifier

        return TorchClassifier(model, **options)
    if _is_keras_model(model):
        from .tensorflow import KerasClassifier

        return KerasClassifier(model, **options)
    raise InputTypeError(
        f"unsupported model type {type(model).__module__}.{type(model).__name__}: neuralcleanse "
        "supports torch.nn.Module models (including Keras 3 models on the torch backend), Keras 3 "
        "models on the TensorFlow backend and tf.keras (tf_keras) models")
