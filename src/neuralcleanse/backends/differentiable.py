"""What the ART-compatible estimators need from a backend beyond the scan interface.

:class:`~neuralcleanse.backends.base.Classifier` covers the trigger search and mitigation. The
estimator classes (``KerasNeuralCleanse``, ``PyTorchNeuralCleanse``) also expose a classifier's
usual surface: outputs in training or inference mode, per-sample losses, input gradients, the raw
output of a hidden layer and one optimiser step. A backend that supports them implements
:class:`DifferentiableClassifier`. Every array argument is a raw input batch in the model's layout
(preprocessing is applied inside); labels are integer class indices.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier, Preprocessing
from neuralcleanse.core.errors import InputError


class DifferentiableClassifier(Classifier):
    """A :class:`Classifier` that can also differentiate and train its model."""

    @abc.abstractmethod
    def outputs(self, x: np.ndarray, batch_size: int = 256, training: bool = False) -> np.ndarray:
        """Model outputs ``(N, nb_classes)``; ``training`` selects the layers' training mode."""

    @abc.abstractmethod
    def loss_values(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Loss of each sample, shape ``(N,)`` (cross-entropy unless a loss was configured)."""

    @abc.abstractmethod
    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Gradient of each sample's own loss with respect to its raw input (shape of ``x``)."""

    @abc.abstractmethod
    def class_gradient(self, x: np.ndarray, labels: np.ndarray | None,
                       training: bool = False) -> np.ndarray:
        """Gradients of model outputs with respect to the raw inputs.

        Args:
            x: Raw inputs ``(N, *input_shape)``.
            labels: ``None`` for every class (result ``(N, nb_classes, *input_shape)``), or one
                class per sample, shape ``(N,)`` (result ``(N, 1, *input_shape)``).
            training: Layers in training mode.
        """

    @abc.abstractmethod
    def layer_output(self, x: np.ndarray, layer: str | int, batch_size: int = 256,
                     training: bool = False) -> np.ndarray:
        """The full output of one layer (a name or index of :meth:`layer_names`) for ``x``."""

    @abc.abstractmethod
    def layer_output_framework(self, x: np.ndarray, layer: str | int) -> Any:
        """The framework's own tensor for a layer's output (see the backend for its form)."""

    @abc.abstractmethod
    def train_batch(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimiser step on a batch in training mode; returns the batch's mean loss."""

    @abc.abstractmethod
    def custom_loss_gradient(self, nn_function: Any, tensors: Any, input_values: Any,
                             name: str = "default") -> np.ndarray:
        """Gradient of ``nn_function`` with respect to its first input, at ``input_values``."""

    def adopt_state(self, previous: DifferentiableClassifier) -> None:
        """Take over the model state ``previous``, an earlier wrapper, keeps outside the model.

        An estimator builds a new wrapper of the same model when one of its settings changes
        (``clip_values``, ``preprocessing``, ...). What a wrapper keeps beside the model's own
        weights belongs to the model, not to the settings, and must carry over: the record of
        pruned neurons (the weights kept aside, so that pruning can be undone and is applied
        again after each training step) and the optimiser that trains the model (with its
        moments). Nothing carries over between wrappers of different models.

        This default keeps nothing outside the model, as for PyTorch, where pruning lives in
        hooks on the model and the optimiser is the user's; a backend that keeps such state
        overrides it.

        Args:
            previous: The wrapper this one replaces.
        """


def split_preprocessing(preprocessing: Preprocessing, input_shape: tuple[int, ...]
                        ) -> tuple[np.ndarray, np.ndarray] | Any:
    """Validate a preprocessing spec and return ``None``, the callable, or float32 ``(sub, div)``.

    ``(0, 1)`` and other identities give ``None``.

    Raises:
        ValueError: If the pair is malformed, does not broadcast to ``input_shape`` or divides
            by zero.
    """
    if preprocessing is None or callable(preprocessing):
        return preprocessing
    try:
        sub, div = preprocessing
    except (TypeError, ValueError):
        raise InputError("preprocessing must be a (subtrahend, divisor) pair or a callable "
                         f"(got {preprocessing!r})") from None
    try:
        sub_a = np.asarray(sub, dtype=np.float32)
        div_a = np.asarray(div, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"preprocessing values must be numbers or arrays (got "
                         f"{preprocessing!r})") from None
    for name, arr in (("subtrahend", sub_a), ("divisor", div_a)):
        try:
            np.broadcast_to(arr, input_shape)
        except ValueError:
            raise InputError(f"preprocessing {name} of shape {arr.shape} does not broadcast to "
                             f"the input shape {tuple(input_shape)}") from None
        if not np.all(np.isfinite(arr)):
            raise InputError(f"preprocessing {name} must be finite")
    if np.any(div_a == 0):
        raise InputError("preprocessing divisor must not be 0")
    if not sub_a.any() and np.all(div_a == 1):
        return None
    return sub_a, div_a


def preprocessing_description(preprocessing: Preprocessing) -> Any:
    """A JSON-friendly description of a preprocessing spec, for reports."""
    if preprocessing is None:
        return None
    if callable(preprocessing):
        return getattr(preprocessing, "__name__", type(preprocessing).__name__)
    sub, div = preprocessing
    return [np.asarray(sub).tolist(), np.asarray(div).tolist()]
