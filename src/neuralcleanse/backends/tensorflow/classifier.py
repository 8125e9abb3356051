"""TensorFlow backend: Keras 3 models on the TensorFlow backend and legacy ``tf_keras`` models.

A Keras 3 model running on the torch backend is a ``torch.nn.Module`` and goes through the
PyTorch backend instead; other Keras backends (JAX, NumPy, OpenVINO) are not supported.

The classifier itself: prediction, the model's facts, layers and activations, pruning (on the
weights, reversibly, through :mod:`.pruning`: :meth:`KerasClassifier.save` therefore saves the
pruned model as it behaves), copying, fine-tuning and saving. The trigger search runs in
:mod:`.session`, the ART gradient surface in :mod:`.differentiable`.
"""

from __future__ import annotations

import copy as copy_module
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, InputTypeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from neuralcleanse.backends.base import (  # noqa: E402
    PROBABILITY_FLOOR,
    Classifier,
    Preprocessing,
    TriggerSession,
    checked_input_shape,
    keras_module,
    keras_output_kind,
)
from neuralcleanse.backends.base import keras_symbolic as _symbolic  # noqa: E402
from neuralcleanse.backends.differentiable import (  # noqa: E402
    preprocessing_description,
    split_preprocessing,
)
from neuralcleanse.backends.tensorflow.pruning import (  # noqa: E402
    PrunedSlices,
    prune,
    zero_slices,
)
from neuralcleanse.backends.tensorflow.session import (  # noqa: E402
    KerasTriggerSession,
    compile_trigger_step,
)
from neuralcleanse.core.checks import check_clip_values, rows_are_probabilities  # noqa: E402
from neuralcleanse.core.config import ScanConfig  # noqa: E402

SUPPORTED = ("Keras 3 models on the TensorFlow backend and tf.keras / tf_keras models (a Keras 3 "
             "model on the torch backend is a torch.nn.Module: use the PyTorch backend)")


def keras_flavour(model: Any) -> Any:
    """Return the Keras module (``keras`` or ``tf_keras``) a model belongs to.

    Raises:
        TypeError: If ``model`` is not a Keras model, or is a Keras 3 model on a backend other
            than TensorFlow.
    """
    flavour = keras_module(model)
    if flavour is None:
        raise InputTypeError(f"expected a Keras model, got {type(model).__module__}."
                             f"{type(model).__name__}; neuralcleanse supports {SUPPORTED}")
    if flavour.__name__ == "keras":  # Keras 3, which runs on several frameworks
        backend = flavour.backend.backend()
        if backend != "tensorflow":
            raise InputTypeError(f"this Keras 3 model runs on the {backend!r} backend; "
                                 f"neuralcleanse supports {SUPPORTED}")
    return flavour


class KerasClassifier(Classifier):
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
        self._pruned: dict[str, PrunedSlices] = {}
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
        shape = checked_input_shape(given, self.model, self.input_layer)
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

    def _evaluate(self, x: np.ndarray, batch_size: int, training: bool) -> np.ndarray:
        with self._scope():
            outs = [self._call(chunk, training=training).numpy()
                    for chunk in self._batches(x, batch_size)]
        if not outs:
            return np.zeros((0, self.nb_classes), dtype=np.float32)
        return np.concatenate(outs)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for raw inputs ``x``, computed in inference mode."""
        return self._evaluate(x, batch_size, training=False)

    def _log_probabilities(self, out: tf.Tensor) -> tf.Tensor:
        if self.output == "probabilities":
            return tf.math.log(tf.maximum(out, PROBABILITY_FLOOR))
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
    def set_pruned_neurons(self, layer: str | int | None, neurons: np.ndarray) -> None:
        """Zero some neurons of a layer by zeroing their weights (originals kept aside).

        For the input of the final Dense layer (``layer=None``) the neurons' rows of its kernel
        are zeroed, which removes their outgoing connections exactly. For a named Dense or
        convolution layer the neurons' output channels (kernel columns and bias) are zeroed;
        this needs an activation that maps 0 to 0 (ReLU, linear, tanh, ...).
        """
        target, side = self.resolve_layer(layer)
        key = self.FINAL_LAYER_INPUT if side == "input" else target.name
        prune(self._pruned, key, target, side, neurons)

    def pruned_neurons(self) -> dict[str, np.ndarray]:
        """The pruned neurons of every layer that has some.

        The input of the final Dense layer is listed as :attr:`FINAL_LAYER_INPUT`.
        """
        return {name: record.neurons.copy() for name, record in self._pruned.items()}

    def _reapply_pruning(self) -> None:
        for key, record in self._pruned.items():
            layer = self._final_dense() if key == self.FINAL_LAYER_INPUT else \
                self.resolve_layer(key)[0]
            zero_slices(layer, record)

    # -- copying, training, saving -------------------------------------------------------------
    def copy(self) -> KerasClassifier:
        """An independent copy (cloned model, same weights and pruning) with the same settings.

        The copy is of the same class (a :class:`KerasDifferentiableClassifier` copies as one).
        """
        try:
            clone = self._k.models.clone_model(self.model)
        except Exception as exc:  # subclassed models without a config
            raise InputError(f"the model cannot be cloned ({exc}); give a functional or "
                             "Sequential Keras model") from None
        clone.set_weights(self.model.get_weights())
        twin = type(self)(clone, self.input_shape, output=self.output,
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
        if config.precision != "fp32":
            raise InputError(f"precision={config.precision!r} is available for PyTorch models "
                             "only; scan this Keras model with precision='fp32'")
        with self._scope():
            yield KerasTriggerSession(self, x, y, config)

    def trigger_step_function(self, config: ScanConfig) -> Callable[..., Any]:
        """The compiled step of a stacked trigger search (one graph for every stack size)."""
        lo, hi = self.clip_values
        key = (config.learning_rate, config.norm, lo, hi)
        if key not in self._step_functions:
            self._step_functions[key] = compile_trigger_step(self, config.learning_rate,
                                                             config.norm, lo, hi)
        return self._step_functions[key]

    #: How many times a trigger step was traced into a graph (for tests and benchmarks).
    traces = 0
