"""The TensorFlow side of :class:`~neuralcleanse.backends.differentiable.DifferentiableClassifier`.

Adds losses, input gradients, raw layer outputs and optimiser steps to
:class:`~neuralcleanse.backends.tensorflow.classifier.KerasClassifier`, for
``KerasNeuralCleanse``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from neuralcleanse.backends.differentiable import DifferentiableClassifier  # noqa: E402
from neuralcleanse.backends.tensorflow.classifier import KerasClassifier  # noqa: E402
from neuralcleanse.core.errors import InputError  # noqa: E402


class KerasDifferentiableClassifier(KerasClassifier, DifferentiableClassifier):
    """A :class:`KerasClassifier` that also differentiates and trains its model.

    Takes the options of :class:`KerasClassifier`. The loss is the cross-entropy of the outputs
    (log of the probabilities, or log-softmax of logits); :meth:`train_batch` uses the model's
    compiled optimiser, or Adam with learning rate 1e-3 when the model was not compiled.
    """

    def __init__(self, model: Any, input_shape: tuple[int, ...] | None = None,
                 **options: Any) -> None:
        super().__init__(model, input_shape, **options)
        self._optimizer: Any = None
        self._custom: dict[str, Any] = {}

    def adopt_state(self, previous: DifferentiableClassifier) -> None:
        """Take over the pruning record and the optimiser of an earlier wrapper of this model.

        Pruning on Keras keeps the pruned weight slices aside (to undo it and to zero them again
        after each training step), and :meth:`train_batch` keeps its optimiser's moments: both
        belong to the model, so a new wrapper of the same model shares them. A wrapper of
        another model takes nothing.
        """
        if isinstance(previous, KerasClassifier) and previous.model is self.model:
            self._pruned = previous._pruned
            self._optimizer = getattr(previous, "_optimizer", None)

    def outputs(self, x: np.ndarray, batch_size: int = 256, training: bool = False) -> np.ndarray:
        """Model outputs for raw inputs ``x``."""
        return self._evaluate(x, batch_size, training)

    def loss_values(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Cross-entropy of each sample (log of the probabilities, or of the softmax of logits)."""
        outs = []
        with self._scope():
            for start in range(0, len(x), 256):
                xb = tf.constant(np.asarray(x[start:start + 256], np.float32))
                yb = tf.constant(np.asarray(y[start:start + 256], np.int32))
                outs.append(self._per_sample_loss(self._call(xb, training), yb).numpy())
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training: bool = False) -> np.ndarray:
        """Gradient of each sample's loss with respect to its raw input."""
        grads = []
        with self._scope():
            for start in range(0, len(x), 256):
                xb = tf.constant(np.asarray(x[start:start + 256], np.float32))
                yb = tf.constant(np.asarray(y[start:start + 256], np.int32))
                with tf.GradientTape() as tape:
                    tape.watch(xb)
                    loss = tf.reduce_sum(self._per_sample_loss(self._call(xb, training), yb))
                grads.append(tape.gradient(loss, xb).numpy())
        return np.concatenate(grads) if grads else np.zeros((0, *self.input_shape), np.float32)

    def class_gradient(self, x: np.ndarray, labels: np.ndarray | None,
                       training: bool = False) -> np.ndarray:
        """Gradients of the model outputs (all classes, or one class per sample)."""
        chunks = []
        with self._scope():
            for start in range(0, len(x), 256):
                xb = tf.constant(np.asarray(x[start:start + 256], np.float32))
                with tf.GradientTape(persistent=labels is None) as tape:
                    tape.watch(xb)
                    out = self._call(xb, training)
                    if labels is not None:
                        lb = tf.constant(np.asarray(labels[start:start + 256], np.int32))
                        picked = tf.reduce_sum(tf.gather(out, lb, axis=1, batch_dims=1))
                    else:
                        sums = [tf.reduce_sum(out[:, k]) for k in range(self.nb_classes)]
                if labels is not None:
                    chunks.append(tape.gradient(picked, xb).numpy()[:, None])
                    continue
                per_class = [tape.gradient(total, xb).numpy() for total in sums]
                del tape
                chunks.append(np.stack(per_class, axis=1))
        if not chunks:
            width = self.nb_classes if labels is None else 1
            return np.zeros((0, width, *self.input_shape), np.float32)
        return np.concatenate(chunks)

    def custom_loss_gradient(self, nn_function: Any, tensors: Any, input_values: Any,
                             name: str = "default") -> np.ndarray:
        """Gradient of a function with respect to its first input, evaluated at ``input_values``.

        ``nn_function`` is either a symbolic Keras tensor computed from the symbolic inputs
        ``tensors`` (e.g. built from ``model.inputs``; the sub-model is cached under ``name``),
        or a Python callable taking one TensorFlow tensor per input value. A non-scalar result
        is summed before differentiating.
        """
        values = input_values if isinstance(input_values, (list, tuple)) else [input_values]
        if not values:
            raise InputError("input_values must hold at least one array")
        if callable(nn_function) and not hasattr(nn_function, "_keras_history"):
            function = nn_function
        else:
            function = self._custom.get(name)
            if function is None:
                inputs = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
                if len(inputs) != len(values):
                    raise InputError(f"got {len(values)} input value(s) for {len(inputs)} "
                                     "tensor(s)")
                try:
                    sub = self._k.Model(inputs if len(inputs) > 1 else inputs[0], nn_function)
                except (ValueError, TypeError) as exc:
                    raise InputError(f"nn_function cannot be computed from tensors: {exc}"
                                     ) from None
                function = self._custom[name] = (lambda *ts, _m=sub:
                                                 _m(list(ts) if len(ts) > 1 else ts[0]))
        feeds = [tf.constant(np.asarray(v, np.float32)) for v in values]
        with self._scope(), tf.GradientTape() as tape:
            tape.watch(feeds[0])
            result = tf.reduce_sum(tf.cast(function(*feeds), tf.float32))
        grad = tape.gradient(result, feeds[0])
        if grad is None:
            raise InputError("nn_function does not depend on its first input")
        return grad.numpy()

    def layer_output(self, x: np.ndarray, layer: str | int, batch_size: int = 256,
                     training: bool = False) -> np.ndarray:
        """The full output of one layer for raw inputs ``x``."""
        target, side, outs = self._layer_tensors(x, layer, batch_size, training)
        if outs:
            return np.concatenate(outs)
        shape = (target.input if side == "input" else target.output).shape[1:]
        return np.zeros((0, *[int(d) for d in shape]), np.float32)

    def layer_output_framework(self, x: np.ndarray, layer: str | int) -> Any:
        """The symbolic Keras tensor of the layer's output (as ART's Keras classifier returns)."""
        target, _ = self.resolve_layer(layer)
        try:
            return target.output
        except (AttributeError, ValueError) as exc:
            raise InputError(f"layer {target.name!r} has no single symbolic output: {exc}"
                             ) from None

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step of the model's compiled optimiser (Adam, lr 1e-3, when not compiled)."""
        if self._optimizer is None:
            compiled = getattr(self.model, "optimizer", None)
            self._optimizer = compiled if compiled is not None else \
                self._k.optimizers.Adam(learning_rate=1e-3)
        return self._train_step(self._optimizer, np.asarray(x, np.float32),
                                np.asarray(y, np.int64))
