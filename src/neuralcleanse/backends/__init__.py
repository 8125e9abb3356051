"""Framework backends behind one interface, and the dispatcher that picks one for a model."""

from __future__ import annotations

import sys
from typing import Any

from neuralcleanse.backends.base import Classifier, StepStats, TriggerSession, keras_module
from neuralcleanse.core.errors import InputTypeError

__all__ = ["Classifier", "StepStats", "TriggerSession", "wrap_model"]


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_keras_model(model: Any) -> bool:
    return keras_module(model) is not None


def wrap_model(model: Any, **options: Any) -> Classifier:
    """Wrap a framework model in the backend that handles it.

    Args:
        model: A ``torch.nn.Module`` (a Keras 3 model on the torch backend is one), a Keras 3
            model on the TensorFlow backend, a ``tf.keras``/``tf_keras`` model, or an already
            wrapped :class:`Classifier` (returned as is).
        **options: Backend options (``input_shape``, ``output``, ``channels_first``,
            ``clip_values``, ``preprocessing``, ...). For a Keras model, whichever backend runs
            it, the options left out are read from the model: its input shape, its layers'
            data format and its final activation (softmax means probabilities).

    Raises:
        TypeError: If no backend supports the model.
    """
    if isinstance(model, Classifier):
        return model
    if _is_torch_module(model):
        from neuralcleanse.backends.torch.classifier import TorchClassifier

        return TorchClassifier(model, **options)
    if _is_keras_model(model):
        from neuralcleanse.backends.tensorflow.classifier import KerasClassifier

        return KerasClassifier(model, **options)
    raise InputTypeError(
        f"unsupported model type {type(model).__module__}.{type(model).__name__}: neuralcleanse "
        "supports torch.nn.Module models (including Keras 3 models on the torch backend), Keras 3 "
        "models on the TensorFlow backend and tf.keras (tf_keras) models")
