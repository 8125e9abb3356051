"""TensorFlow backend: Keras 3 models on the TensorFlow backend and legacy ``tf_keras`` models.

A Keras 3 model running on the torch backend is a ``torch.nn.Module`` and goes through the
PyTorch backend instead; other Keras backends (JAX, NumPy, OpenVINO) are not supported.

Pruning is done on the weights, reversibly: the pruned slices of a layer's kernel (and bias)
are kept aside and set to zero, ``set_pruned_neurons(layer, [])`` writes them back, and
:meth:`KerasClassifier.save` therefore saves the pruned model as it behaves.
"""

from __future__ import annotations

import copy as copy_module
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, InputTypeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from neuralcleanse.backends.base import (  # noqa: E402
    TANH_EPSILON,
    Preprocessing,
    StepStats,
    TriggerSession,
    keras_output_kind,
    rows_are_probabilities,
)
from neuralcleanse.backends.base import keras_symbolic as _symbolic  # noqa: E402
from neuralcleanse.backends.differentiable import (  # noqa: E402
    DifferentiableClassifier,
    preprocessing_description,
    split_preprocessing,
)
from neuralcleanse.core.checks import check_clip_values  # noqa: E402
from neuralcleanse.core.config import ScanConfig  # noqa: E402
from neuralcleanse.core.layout import mask_axes  # noqa: E402

ADAM_BETAS = (0.5, 0.9)
ADAM_EPSILON = 1e-8
SUPPORTED = ("Keras 3 models on the TensorFlow backend and tf.keras / tf_keras models (a Keras 3 "
             "model on the torch backend is a torch.nn.Module: use the PyTorch backend)")


def keras_flavour(model: Any) -> Any:
    """Return the Keras module (``keras`` or ``tf_keras``) a model belongs to.

    Raises:
        TypeError: If ``model`` is not a Keras model, or is a Keras 3 model on a backend other
            than TensorFlow.
    """
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None and isinstance(model, tf_keras.Model):
        return tf_keras
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise InputTypeError(f"this Keras 3 model runs on the {backend!r} backend; "
                                 f"neuralcleanse supports {SUPPORTED}")
        return keras
    if isinstance(model, tf.keras.Model):  # tf.keras resolving to another module
        return sys.modules[type(model).__module__.split(".")[0]]
    raise InputTypeError(f"expected a Keras model, got {type(model).__module__}."
                    f"{type(model).__name__}; neuralcleanse supports {SUPPORTED}")


@dataclass
class _Pruned:
    """Pruned neurons of one layer and the weight slices they had before."""

    side: str
    neurons: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray | None


class KerasClassifier(DifferentiableClassifier):
    """A Keras image classifier seen through the backend interface.

    Args:
        model: A Keras 3 (TensorFlow backend) or ``tf_keras`` model; never modified except by
            the mitigation primitives :meth:`set_pruned_neurons` and :meth:`fine_tune`.
        input_shape: Shape of one raw input; read from the model when it declares one.
        output: ``"logits"`` or ``"probabilities"``; when omitted it is read from the final
            layer's activation (softmax means probabilities) or, failing that, from the outputs
            of a probe batch.
        channels_first: Whether inputs are ``(C, H, W)``; Keras' default is channels last.
        clip_values: Raw input range ``(min, max)``.
        preprocessing: ``(subtrahend, divisor)`` or a callable on tensors, applied to raw
            inputs (after a trigger is stamped) before the model.
        input_layer: Which input of a multi-input model receives the images.
        output_layer: Which output of a multi-output model holds the class scores.
        nb_classes: Number of outputs; read from the model when omitted.
        device: A TensorFlow device name (e.g. ``"/GPU:0"``); TensorFlow's placement otherwise.
    """

    framework = "tensorflow"

    def __init__(self, model: Any, input_shape: tuple[int, ...] | None = None, *,
                 output: str | None = None, channels_first: bool = False,
                 clip_values: tuple[float, float] = (0.0, 1.0),
                 preprocessing: Preprocessing = None, input_layer: int = 0,
                 output_layer: int = 0, nb_classes: int | None = None,
                 device: str | None = None) -> None:
        self._k = keras_flavour(model)
        self.model = model
        if output is not None and output not in ("logits", "probabilities"):
            raise InputError(f"output must be 'logits' or 'probabilities' (got {output!r})")
        self.channels_first = bool(channels_first)
        self.clip_values = check_clip_values(clip_values)
        self.device = device
        self.input_layer = self._check_index("input_layer", input_layer, _symbolic(model, "inputs"))
        self.output_layer = self._check_index("output_layer", output_layer,
                                              _symbolic(model, "outputs"))
        self._inputs = _symbolic(model, "inputs")
        self._outputs = _symbolic(model, "outputs")
        self._net = self._build_net()
        self.input_shape = self._resolve_input_shape(input_shape)
        self.preprocessing = preprocessing
        self._preprocess = self._tensor_preprocessing(preprocessing)
        self._bytes_per_image: int | None = None
        self._submodels: dict[tuple[str, str], Any] = {}
        self._step_functions: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._pruned: dict[str, _Pruned] = {}
        self._optimizer: Any = None
        self._custom: dict[str, Any] = {}
        self._train_functions: dict[int, Callable[..., Any]] = {}
        self.output = output or self._infer_output()
        self.nb_classes = int(nb_classes) if nb_classes else self._count_outputs()

    # -- construction helpers ----------------------------------------------------------------
    @staticmethod
    def _check_index(name: str, value: Any, tensors: list[Any] | None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputTypeError(f"{name} must be an integer (got {value!r})")
        count = len(tensors) if tensors is not None else 1
        if not 0 <= int(value) < count:
            raise InputError(f"{name}={value} is out of range: the model has {count} "
                             f"{'input' if name == 'input_layer' else 'output'}(s)")
        return int(value)

    def _build_net(self) -> Any:
        """A callable from the chosen input to the chosen output (shares the model's layers)."""
        if self._inputs is None or self._outputs is None:
            if self.input_layer or self.output_layer:
                raise InputError("input_layer / output_layer need a functional or Sequential "
                                 "Keras model with declared inputs and outputs")
            return self.model
        source, target = self._inputs[self.input_layer], self._outputs[self.output_layer]
        try:
            return self._k.Model(source, target)
        except ValueError as exc:
            raise InputError(f"output {self.output_layer} of the model cannot be computed from "
                             f"input {self.input_layer} alone; choose input_layer/output_layer "
                             f"that are connected ({exc})") from None

    def _resolve_input_shape(self, given: tuple[int, ...] | None) -> tuple[int, ...]:
        declared = None
        if self._inputs is not None:
            declared = tuple(self._inputs[self.input_layer].shape[1:])
        if given is None:
            if declared is None or any(d is None for d in declared):
                raise InputError("input_shape is required: the model does not declare the shape "
                                 "of its input")
            shape = tuple(int(d) for d in declared)
        else:
            shape = tuple(int(d) for d in given)
            if declared is not None and len(declared) != len(shape) or declared is not None and \
                    any(d is not None and int(d) != s for d, s in zip(declared, shape)):
                raise InputError(f"input_shape {shape} does not match the model's input shape "
                                 f"{tuple(declared)}")
        if len(shape) not in (2, 3):
            raise InputError(f"input_shape must be (H, W, C), (C, H, W) or (H, W); got {shape}")
        return shape

    def _tensor_preprocessing(self, preprocessing: Preprocessing
                              ) -> Callable[[tf.Tensor], tf.Tensor] | None:
        spec = split_preprocessing(preprocessing, self.input_shape)
        if spec is None or callable(spec):
            return spec
        sub = tf.constant(spec[0])
        div = tf.constant(spec[1])
        return lambda x: (x - sub) / div

    def _infer_output(self) -> str:
        known = keras_output_kind(self.model, self.output_layer)
        if known is not None:
            return known
        lo, hi = self.clip_values
        probe = np.random.default_rng(0).uniform(lo, hi, (8, *self.input_shape))
        out = self._call(tf.constant(probe, tf.float32), training=False).numpy()
        return "probabilities" if rows_are_probabilities(out) else "logits"

    def _count_outputs(self) -> int:
        if self._outputs is not None:
            last = self._outputs[self.output_layer].shape[-1]
            if last is not None and len(self._outputs[self.output_layer].shape) == 2:
                return int(last)
        lo, hi = self.clip_values
        probe = tf.fill((1, *self.input_shape), (lo + hi) / 2)
        try:
            out = self._call(probe, training=False)
        except Exception as exc:  # the model rejected the input shape
            raise InputError(f"the model could not run on inputs of shape "
                             f"{(1, *self.input_shape)}: {exc}") from exc
        if len(out.shape) != 2:
            raise InputError(f"the model must return one row of class scores per image; got "
                             f"output shape {tuple(out.shape)}")
        return int(out.shape[1])

    def describe(self) -> dict[str, Any]:
        """Model facts echoed in reports."""
        out = super().describe()
        out.update(tensorflow_version=tf.__version__, keras=self._k.__name__,
                   keras_version=getattr(self._k, "__version__", ""),
                   model_class=type(self.model).__name__,
                   preprocessing=preprocessing_description(self.preprocessing))
        return out

    # -- forward passes ----------------------------------------------------------------------
    def _scope(self) -> AbstractContextManager[Any]:
        return tf.device(self.device) if self.device else nullcontext()

    def _call(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """Preprocess raw inputs and run the network (one output, float32)."""
        if self._preprocess is not None:
            x = self._preprocess(x)
        out = self._net(x, training=training)
        if isinstance(out, (list, tuple)):
            out = out[self.output_layer]
        elif isinstance(out, dict):
            out = list(out.values())[self.output_layer]
        return tf.cast(out, tf.float32)

    def _batches(self, x: np.ndarray, batch_size: int) -> Iterator[tf.Tensor]:
        for start in range(0, len(x), batch_size):
            yield tf.constant(np.asarray(x[start:start + batch_size], np.float32))

    def outputs(self, x: np.ndarray, batch_size: int = 256, training: bool = False) -> np.ndarray:
        """Model outputs for raw inputs ``x``."""
        with self._scope():
            outs = [self._call(chunk, training=training).numpy()
                    for chunk in self._batches(x, batch_size)]
        if not outs:
            return np.zeros((0, self.nb_classes), dtype=np.float32)
        return np.concatenate(outs)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for raw inputs ``x``, computed in inference mode."""
        return self.outputs(x, batch_size=batch_size, training=False)

    def _log_probabilities(self, out: tf.Tensor) -> tf.Tensor:
        if self.output == "probabilities":
            return tf.math.log(tf.maximum(out, 1e-12))
        return tf.nn.log_softmax(out, axis=-1)

    def _per_sample_loss(self, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        log_p = self._log_probabilities(out)
        return -tf.gather(log_p, tf.cast(y, tf.int32), axis=1, batch_dims=1)

    def activation_bytes_per_image(self) -> int:
        """Bytes of all layer outputs for one image, times three (forward, grads, workspace)."""
        if self._bytes_per_image is None:
            total = int(np.prod(self.input_shape))
            for layer in self.model.layers:
                try:
                    shape = layer.output.shape
                except (AttributeError, ValueError):
                    continue
                if not isinstance(shape, (tuple, list, tf.TensorShape)):
                    continue
                dims = [int(d) for d in list(shape)[1:] if d is not None]
                total += int(np.prod(dims)) if dims else 0
            if self._inputs is None:  # subclassed: no graph to read, assume a deep network
                total *= 20
            self._bytes_per_image = 3 * 4 * total
        return self._bytes_per_image

    # -- gradients and losses (for the ART-compatible estimators) -----------------------------
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

    # -- layers ------------------------------------------------------------------------------
    def _layers(self) -> list[Any]:
        input_type = self._k.layers.InputLayer
        return [layer for layer in self.model.layers if not isinstance(layer, input_type)]

    def layer_names(self) -> list[str]:
        """Names of the model's layers (input layers excluded), in model order."""
        return [layer.name for layer in self._layers()]

    def _final_dense(self) -> Any:
        finals = [layer for layer in self._layers() if isinstance(layer, self._k.layers.Dense)]
        if not finals:
            raise InputError("the model has no Dense layer to call the final classification "
                             "layer; choose a layer by name from: "
                             f"{', '.join(self.layer_names())}")
        return finals[-1]

    def resolve_layer(self, layer: str | int | None) -> tuple[Any, str]:
        """Map a layer spec onto ``(Keras layer, "input" | "output")``."""
        name = self.layer_spec_name(layer)
        if name is None:
            return self._final_dense(), "input"
        layers = self._layers()
        return layers[[item.name for item in layers].index(name)], "output"

    def _submodel(self, layer: Any, side: str) -> Any:
        key = (layer.name, side)
        if key not in self._submodels:
            if self._inputs is None:
                raise InputError("layer activations need a functional Keras model or a "
                                 "Sequential one that starts with keras.Input(...): this model "
                                 "has no graph of layers to cut")
            try:
                target = layer.input if side == "input" else layer.output
                self._submodels[key] = self._k.Model(self._inputs[self.input_layer], target)
            except (AttributeError, ValueError) as exc:
                raise InputError(f"the {side} of layer {layer.name!r} cannot be computed from "
                                 f"the model's input {self.input_layer}: {exc}") from None
        return self._submodels[key]

    def _layer_tensors(self, x: np.ndarray, layer: str | int | None, batch_size: int,
                       training: bool) -> tuple[Any, str, list[np.ndarray]]:
        target, side = self.resolve_layer(layer)
        sub = self._submodel(target, side)
        outs = []
        with self._scope():
            for chunk in self._batches(x, batch_size):
                if self._preprocess is not None:
                    chunk = self._preprocess(chunk)
                out = sub(chunk, training=training)
                if isinstance(out, (list, tuple)):
                    out = out[0]
                outs.append(tf.cast(out, tf.float32).numpy())
        return target, side, outs

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

    def _channel_axis_last(self, layer: Any) -> bool:
        data_format = getattr(layer, "data_format", None)
        if data_format is not None:
            return data_format == "channels_last"
        return not self.channels_first

    def neuron_activations(self, x: np.ndarray, layer: str | int | None = None,
                           batch_size: int = 256) -> np.ndarray:
        """Per-neuron activations of one layer; convolution channels averaged over space."""
        target, _side, outs = self._layer_tensors(x, layer, batch_size, training=False)
        if not outs:
            return np.zeros((0, 0), np.float32)
        acts = np.concatenate(outs)
        if acts.ndim > 2:
            if self._channel_axis_last(target):
                acts = acts.reshape(len(acts), -1, acts.shape[-1]).mean(axis=1)
            else:
                acts = acts.reshape(len(acts), acts.shape[1], -1).mean(axis=2)
        return acts

    # -- pruning -----------------------------------------------------------------------------
    def _restore(self, name: str) -> None:
        record = self._pruned.pop(name, None)
        if record is None:
            return
        layer = self.resolve_layer(name)[0] if record.side == "output" else self._final_dense()
        kernel = layer.kernel.numpy()
        self._write_slices(kernel, record, record.kernel)
        layer.kernel.assign(kernel)
        if record.bias is not None:
            bias = layer.bias.numpy()
            bias[record.neurons] = record.bias
            layer.bias.assign(bias)

    @staticmethod
    def _write_slices(kernel: np.ndarray, record: _Pruned, values: Any) -> None:
        if record.side == "input":
            kernel[record.neurons, :] = values
        else:
            kernel[..., record.neurons] = values

    def _apply(self, layer: Any, record: _Pruned) -> None:
        kernel = layer.kernel.numpy()
        self._write_slices(kernel, record, 0.0)
        layer.kernel.assign(kernel)
        if record.bias is not None:
            bias = layer.bias.numpy()
            bias[record.neurons] = 0.0
            layer.bias.assign(bias)

    def _pruning_key(self, layer: Any, side: str) -> str:
        return self.FINAL_LAYER_INPUT if side == "input" else layer.name

    def set_pruned_neurons(self, layer: str | int | None, neurons: np.ndarray) -> None:
        """Zero some neurons of a layer by zeroing their weights (originals kept aside).

        For the input of the final Dense layer (``layer=None``) the neurons' rows of its kernel
        are zeroed, which removes their outgoing connections exactly. For a named Dense or
        convolution layer the neurons' output channels (kernel columns and bias) are zeroed;
        this needs an activation that maps 0 to 0 (ReLU, linear, tanh, ...).
        """
        target, side = self.resolve_layer(layer)
        key = self._pruning_key(target, side)
        idx = np.unique(np.asarray(neurons, dtype=np.int64).ravel())
        if getattr(target, "kernel", None) is None:
            raise InputError(f"layer {target.name!r} ({type(target).__name__}) has no kernel: "
                             "pruning works on Dense and convolution layers")
        width = int(target.kernel.shape[0] if side == "input" else target.kernel.shape[-1])
        if idx.size and (idx.min() < 0 or idx.max() >= width):
            raise InputError(f"neurons must be in [0, {width}) for layer {target.name!r} "
                             f"(got {idx.min()}..{idx.max()})")
        if side == "output" and idx.size:
            activation = getattr(target, "activation", None)
            if activation is not None and float(tf.reduce_max(tf.abs(
                    activation(tf.zeros((1, 1)))))) != 0.0:
                raise InputError(f"layer {target.name!r} has an activation that does not map 0 "
                                 "to 0, so zeroing its weights would not silence its neurons")
        self._restore(key)
        if not idx.size:
            return
        kernel = target.kernel.numpy()
        saved = kernel[idx, :].copy() if side == "input" else kernel[..., idx].copy()
        bias = None
        if side == "output" and getattr(target, "bias", None) is not None:
            bias = target.bias.numpy()[idx].copy()
        record = _Pruned(side=side, neurons=idx, kernel=saved, bias=bias)
        self._pruned[key] = record
        self._apply(target, record)

    def pruned_neurons(self) -> dict[str, np.ndarray]:
        """The pruned neurons of every layer that has some.

        The input of the final Dense layer is listed as :attr:`FINAL_LAYER_INPUT`.
        """
        return {name: record.neurons.copy() for name, record in self._pruned.items()}

    def _reapply_pruning(self) -> None:
        for key, record in self._pruned.items():
            layer = self._final_dense() if key == self.FINAL_LAYER_INPUT else \
                self.resolve_layer(key)[0]
            self._apply(layer, record)

    # -- copying, training, saving -------------------------------------------------------------
    def copy(self) -> KerasClassifier:
        """An independent copy (cloned model, same weights and pruning) with the same settings."""
        try:
            clone = self._k.models.clone_model(self.model)
        except Exception as exc:  # subclassed models without a config
            raise InputError(f"the model cannot be cloned ({exc}); give a functional or "
                             "Sequential Keras model") from None
        clone.set_weights(self.model.get_weights())
        twin = KerasClassifier(clone, self.input_shape, output=self.output,
                               channels_first=self.channels_first, clip_values=self.clip_values,
                               preprocessing=self.preprocessing, input_layer=self.input_layer,
                               output_layer=self.output_layer, nb_classes=self.nb_classes,
                               device=self.device)
        twin._pruned = copy_module.deepcopy(self._pruned)
        return twin

    def _compiled_train_step(self, optimizer: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """One compiled optimiser step per optimiser (its variables are created first)."""
        step = self._train_functions.get(id(optimizer))
        if step is not None:
            return step
        variables = list(self.model.trainable_variables)
        if not getattr(optimizer, "built", True):
            optimizer.build(variables)

        def train(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(self._per_sample_loss(self._call(x, training=True), y))
            grads = tape.gradient(loss, variables)
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            if pairs:
                optimizer.apply_gradients(pairs)
            return loss

        signature = [tf.TensorSpec([None, *self.input_shape], tf.float32),
                     tf.TensorSpec([None], tf.int32)]
        step = tf.function(train, input_signature=signature)
        self._train_functions = {id(optimizer): step}  # the latest optimiser only
        return step

    def _train_step(self, optimizer: Any, xb: np.ndarray, yb: np.ndarray) -> float:
        step = self._compiled_train_step(optimizer)
        with self._scope():
            loss = step(tf.constant(xb, tf.float32), tf.constant(yb, tf.int32))
        if self._pruned:
            self._reapply_pruning()
        return float(loss.numpy())

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step of the model's compiled optimiser (Adam, lr 1e-3, when not compiled)."""
        if self._optimizer is None:
            compiled = getattr(self.model, "optimizer", None)
            self._optimizer = compiled if compiled is not None else \
                self._k.optimizers.Adam(learning_rate=1e-3)
        return self._train_step(self._optimizer, np.asarray(x, np.float32),
                                np.asarray(y, np.int64))

    def fine_tune(self, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
                  batch_size: int, seed: int) -> None:
        """Adam on the cross-entropy with training-mode layers; pruned weights stay zero."""
        optimizer = self._k.optimizers.Adam(learning_rate=learning_rate)
        xs = np.asarray(x, np.float32)
        ys = np.asarray(y, np.int64)
        rng = np.random.default_rng(int(seed))
        for _ in range(int(epochs)):
            order = rng.permutation(len(xs))
            for start in range(0, len(xs), batch_size):
                idx = order[start:start + batch_size]
                self._train_step(optimizer, xs[idx], ys[idx])

    def save(self, path: str) -> str:
        """Save in the native ``.keras`` format (``.h5`` when the path ends with it)."""
        out = Path(path)
        if out.suffix not in (".keras", ".h5"):
            out = out.with_name(out.name + ".keras")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(str(out))
        return str(out)

    # -- trigger search ----------------------------------------------------------------------
    @contextmanager
    def trigger_session(self, x: np.ndarray, y: np.ndarray, config: ScanConfig
                        ) -> Iterator[TriggerSession]:
        """Open a stacked trigger search over ``x, y``; the model's variables are only read."""
        with self._scope():
            yield _KerasTriggerSession(self, x, y, config)

    def _mask_view(self) -> list[int]:
        """Shape of ``(labels, H*W)`` masks against ``(labels, batch, *input_shape)`` images."""
        return [-1, 1, *mask_axes(tuple(self.input_shape), self.channels_first)]

    def trigger_step_function(self, config: ScanConfig) -> Callable[..., Any]:
        """The compiled step of a stacked trigger search (one graph for every stack size)."""
        lo, hi = self.clip_values
        key = (config.learning_rate, config.norm, lo, hi)
        if key not in self._step_functions:
            self._step_functions[key] = self._compile_step(config.learning_rate, config.norm,
                                                           lo, hi)
        return self._step_functions[key]

    def _compile_step(self, lr: float, norm: float, lo: float, hi: float
                      ) -> Callable[..., Any]:
        shape = list(self.input_shape)
        h, w = self.image_shape
        n_mask = h * w
        mask_view = self._mask_view()
        scale = 1.0 / (2.0 - TANH_EPSILON)
        beta1, beta2 = ADAM_BETAS
        n_params = n_mask + int(np.prod(shape))

        def regulariser(mask: tf.Tensor) -> tf.Tensor:
            if norm == 1:
                return tf.reduce_sum(mask, axis=[1, 2])
            if norm == 2:
                return tf.sqrt(tf.reduce_sum(tf.square(mask), axis=[1, 2]))
            return tf.reduce_max(mask, axis=[1, 2])

        def step(x: tf.Tensor, y: tf.Tensor, theta: tf.Tensor, m: tf.Tensor, v: tf.Tensor,
                 t: tf.Tensor, targets: tf.Tensor, index: tf.Tensor, cost: tf.Tensor
                 ) -> tuple[tf.Tensor, ...]:
            self.traces += 1  # Python side effect: runs only while tracing
            n_mb, n_labels, batch = tf.unstack(tf.shape(index))
            zeros = tf.zeros([n_labels], tf.float32)
            hits, counted, reg_sum, loss_sum = zeros, zeros, zeros, zeros
            target_col = targets[:, None]
            for j in tf.range(n_mb):
                flat = tf.reshape(index[j], [-1])
                xb = tf.reshape(tf.gather(x, flat), tf.concat([[n_labels, batch], shape], 0))
                yb = tf.reshape(tf.gather(y, flat), [n_labels, batch])
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    mask = tf.reshape(tf.tanh(theta[:, :n_mask]) * scale + 0.5, [-1, h, w])
                    pattern = tf.tanh(theta[:, n_mask:]) * scale + 0.5
                    pattern = tf.reshape(lo + pattern * (hi - lo), [-1, 1, *shape])
                    stamped = xb + tf.reshape(mask, mask_view) * (pattern - xb)
                    out = self._call(tf.reshape(stamped, [-1, *shape]), training=False)
                    out = tf.reshape(out, [n_labels, batch, -1])
                    log_p = self._log_probabilities(out)
                    picked = tf.gather(log_p, tf.repeat(target_col, batch, axis=1), axis=2,
                                       batch_dims=2)
                    ce = -tf.reduce_mean(picked, axis=1)
                    reg = regulariser(mask)
                    per_label = ce + cost * reg
                    total = tf.reduce_sum(per_label)
                grad = tape.gradient(total, theta)
                t = t + 1.0
                m = beta1 * m + (1.0 - beta1) * grad
                v = beta2 * v + (1.0 - beta2) * tf.square(grad)
                bias1 = (1.0 - tf.pow(beta1, t))[:, None]
                bias2 = (1.0 - tf.pow(beta2, t))[:, None]
                theta = theta - (lr / bias1) * m / (tf.sqrt(v / bias2) + ADAM_EPSILON)
                other = tf.not_equal(yb, target_col)
                predicted = tf.argmax(out, axis=2, output_type=tf.int32)
                hit = tf.logical_and(tf.equal(predicted, target_col), other)
                hits += tf.reduce_sum(tf.cast(hit, tf.float32), axis=1)
                counted += tf.reduce_sum(tf.cast(other, tf.float32), axis=1)
                reg_sum += reg
                loss_sum += per_label
            n = tf.cast(n_mb, tf.float32)
            summary = tf.stack([hits / tf.maximum(counted, 1.0), reg_sum / n, loss_sum / n])
            return theta, m, v, t, summary

        spec = tf.TensorSpec
        signature = [spec([None, *shape], tf.float32), spec([None], tf.int32),
                     spec([None, n_params], tf.float32), spec([None, n_params], tf.float32),
                     spec([None, n_params], tf.float32), spec([None], tf.float32),
                     spec([None], tf.int32), spec([None, None, None], tf.int32),
                     spec([None], tf.float32)]
        return tf.function(step, input_signature=signature)

    #: How many times a trigger step was traced into a graph (for tests and benchmarks).
    traces = 0


class _KerasTriggerSession(TriggerSession):
    """Trigger parameters of a stack of labels as one ``(labels, P)`` tensor with Adam state."""

    def __init__(self, clf: KerasClassifier, x: np.ndarray, y: np.ndarray,
                 config: ScanConfig) -> None:
        self.clf = clf
        self.x = tf.constant(np.ascontiguousarray(x, dtype=np.float32))
        self.y = tf.constant(np.asarray(y, dtype=np.int32))
        self.shape = clf.input_shape
        self.hw = clf.image_shape
        self.n_mask = self.hw[0] * self.hw[1]
        self.n_params = self.n_mask + int(np.prod(self.shape))
        self.lo, self.hi = clf.clip_values
        self._step = clf.trigger_step_function(config)
        self.theta = tf.zeros((0, self.n_params))
        self.m = tf.zeros_like(self.theta)
        self.v = tf.zeros_like(self.theta)
        self.t = tf.zeros((0,))
        self.targets = tf.zeros((0,), tf.int32)

    @property
    def size(self) -> int:
        return int(self.theta.shape[0])

    def add(self, targets: np.ndarray, mask_raw: np.ndarray, pattern_raw: np.ndarray) -> None:
        k = len(targets)
        new = np.concatenate([mask_raw.reshape(k, -1), pattern_raw.reshape(k, -1)], axis=1)
        new_t = tf.constant(new.astype(np.float32))
        self.theta = tf.concat([self.theta, new_t], 0)
        self.m = tf.concat([self.m, tf.zeros_like(new_t)], 0)
        self.v = tf.concat([self.v, tf.zeros_like(new_t)], 0)
        self.t = tf.concat([self.t, tf.zeros((k,))], 0)
        self.targets = tf.concat([self.targets, tf.constant(np.asarray(targets), tf.int32)], 0)

    def remove(self, slots: np.ndarray) -> None:
        keep = tf.constant(np.setdiff1d(np.arange(self.size), np.asarray(slots)), tf.int32)
        for name in ("theta", "m", "v", "t", "targets"):
            setattr(self, name, tf.gather(getattr(self, name), keep))

    def step(self, batch_indices: np.ndarray, costs: np.ndarray) -> StepStats:
        index = tf.constant(np.asarray(batch_indices, np.int32))
        cost = tf.constant(np.asarray(costs, np.float32))
        self.theta, self.m, self.v, self.t, summary = self._step(
            self.x, self.y, self.theta, self.m, self.v, self.t, self.targets, index, cost)
        host = summary.numpy().astype(np.float64)
        return StepStats(attack_success_rate=host[0], reg=host[1], loss=host[2])

    def triggers(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = tf.gather(self.theta, tf.constant(np.asarray(slots), tf.int32)).numpy()
        scale = 1.0 / (2.0 - TANH_EPSILON)
        mask = np.tanh(theta[:, :self.n_mask]) * scale + 0.5
        pattern = np.tanh(theta[:, self.n_mask:]) * scale + 0.5
        pattern = self.lo + pattern * (self.hi - self.lo)
        return (mask.reshape(-1, *self.hw).astype(np.float32),
                pattern.reshape(-1, *self.shape).astype(np.float32))
