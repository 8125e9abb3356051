"""The small interface every framework backend implements.

Everything outside ``backends/`` talks to a model only through :class:`Classifier` and the
:class:`TriggerSession` it opens, and never imports a deep-learning framework itself.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuralcleanse.core.checks import rows_are_probabilities  # noqa: F401 - re-exported
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError

#: Keeps ``tanh`` away from exactly +-1 so that the inverse stays finite (the authors' epsilon).
TANH_EPSILON = 1e-7
#: Adam's ``(beta1, beta2)`` and epsilon in the trigger step (the authors' settings).
ADAM_BETAS = (0.5, 0.9)
ADAM_EPSILON = 1e-8
#: Probabilities are floored here before their log is taken (a model that outputs a hard 0).
PROBABILITY_FLOOR = 1e-12

Preprocessing = tuple[Any, Any] | Callable[[Any], Any] | None


def to_raw(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to the unconstrained ``tanh`` parametrisation."""
    return np.arctanh((np.asarray(values, dtype=np.float64) - 0.5) * (2.0 - TANH_EPSILON))


# -- Keras models, whichever framework runs them ---------------------------------------------
# A Keras 3 model on the torch backend is run by the PyTorch backend and one on TensorFlow by
# the TensorFlow backend; what the model itself says about its inputs and outputs is read here,
# once, so that both backends see the same model the same way.

def keras_module(model: Any) -> Any | None:
    """The Keras package (``keras`` or ``tf_keras``) that ``model`` is a model of, else None."""
    for name in ("keras", "tf_keras"):
        mod = sys.modules.get(name)
        base = getattr(mod, "Model", None) if mod is not None else None
        if isinstance(base, type) and isinstance(model, base):
            return mod
    tf = sys.modules.get("tensorflow")
    base = getattr(getattr(tf, "keras", None), "Model", None) if tf is not None else None
    if isinstance(base, type) and isinstance(model, base):  # tf.keras resolving elsewhere
        return sys.modules.get(type(model).__module__.split(".")[0])
    return None


def keras_symbolic(model: Any, attr: str) -> list[Any] | None:
    """``model.inputs`` / ``model.outputs`` of a functional or Sequential model, else ``None``."""
    try:
        value = getattr(model, attr)
    except (AttributeError, ValueError):
        return None
    if not value:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def keras_producing_layer(tensor: Any) -> Any:
    """The layer whose output a symbolic Keras tensor is (``None`` when not recorded)."""
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history is not None else None


def keras_final_activation_is_softmax(layer: Any) -> bool | None:
    """Whether a Keras model's final layer outputs probabilities rather than logits.

    True for a softmax (a ``Softmax`` layer or a softmax activation), False for any other
    activation (a linear layer gives logits), None when the layer does not tell. A nested model
    is looked into through its own single output.
    """
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        return True
    inner = keras_symbolic(layer, "outputs") if keras_module(layer) is not None else None
    if inner is not None:
        return keras_final_activation_is_softmax(keras_producing_layer(inner[0])) \
            if len(inner) == 1 else None
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", "") == "softmax"


def keras_output_kind(model: Any, output_index: int = 0) -> str | None:
    """``"probabilities"`` or ``"logits"`` as the final activation says, None when unknown."""
    outputs = keras_symbolic(model, "outputs")
    if outputs is None or not 0 <= output_index < len(outputs):
        return None
    verdict = keras_final_activation_is_softmax(keras_producing_layer(outputs[output_index]))
    return None if verdict is None else ("probabilities" if verdict else "logits")


def keras_input_shape(model: Any, input_index: int = 0) -> tuple[int | None, ...] | None:
    """Shape of one input (no batch axis) as the model declares it, else None."""
    inputs = keras_symbolic(model, "inputs")
    if inputs is None or not 0 <= input_index < len(inputs):
        return None
    return tuple(None if d is None else int(d) for d in list(inputs[input_index].shape)[1:])


def checked_input_shape(given: tuple[int, ...] | None, keras_model: Any = None,
                        input_index: int = 0) -> tuple[int, ...]:
    """The shape of one input: ``given``, checked against what a Keras model declares.

    Args:
        given: The shape the caller gave, or None to read it from ``keras_model``.
        keras_model: A Keras model (on any framework) whose declared input shape ``given``
            must agree with; None for other models.
        input_index: Which input of a multi-input Keras model.

    Raises:
        InputError: If no shape is given and the model declares none, or the given shape
            contradicts the declared one.
    """
    declared = keras_input_shape(keras_model, input_index) if keras_model is not None else None
    if given is None:
        if declared is None or any(d is None for d in declared):
            raise InputError("input_shape is required: the model does not declare the shape "
                             "of its input")
        return tuple(int(d) for d in declared)  # type: ignore[arg-type]
    shape = tuple(int(d) for d in given)
    if declared is not None and (len(declared) != len(shape) or any(
            d is not None and d != s for d, s in zip(declared, shape))):
        raise InputError(f"the input shape {shape} does not match the Keras model's input shape "
                         f"{declared} ({keras_data_format(keras_model)[0]}): give images in the "
                         "model's layout")
    return shape


def _keras_layers(model: Any) -> Iterator[Any]:
    """The model's layers in order, nested models' layers in their place."""
    for layer in getattr(model, "layers", None) or ():
        yield layer
        if getattr(layer, "layers", None):
            yield from _keras_layers(layer)


def keras_data_format(model: Any) -> tuple[str, bool]:
    """``(data format, declared)`` of a Keras model.

    The first layer that has a ``data_format`` (convolutions, pooling, ``Flatten``, ...)
    decides, since it reads the images; ``declared`` is then True. A model without such a layer
    follows Keras' configured ``image_data_format()`` (``declared`` False).
    """
    for layer in _keras_layers(model):
        fmt = getattr(layer, "data_format", None)
        if fmt in ("channels_first", "channels_last"):
            return fmt, True
    mod = keras_module(model)
    try:
        configured = mod.backend.image_data_format() if mod is not None else "channels_last"
    except AttributeError:
        configured = "channels_last"
    return ("channels_first" if configured == "channels_first" else "channels_last"), False


def keras_channels_first(model: Any, given: bool | None) -> bool:
    """The layout to read a Keras model's inputs in: the model's own unless ``given``.

    Raises:
        InputError: If ``given`` contradicts the data format the model's layers declare (the
            images would be read with their axes mixed up).
    """
    fmt, declared = keras_data_format(model)
    own = fmt == "channels_first"
    if given is None:
        return own
    if declared and bool(given) != own:
        raise InputError(f"channels_first={bool(given)} contradicts the Keras model, whose layers "
                         f"use data_format={fmt!r}: pass channels_first={own}, the model's own "
                         "layout")
    return bool(given)


@dataclass
class StepStats:
    """What one optimisation step measured for each stacked label (host arrays, one per slot).

    See :class:`TriggerSession` for how each is computed.
    """

    attack_success_rate: np.ndarray
    reg: np.ndarray
    loss: np.ndarray


class TriggerSession(abc.ABC):
    """Stacked trigger parameters of several labels, optimised together on one model.

    Slots are the positions of the labels in the stack; :meth:`remove` compacts them. The math
    of a step is stated here, once; every backend's session follows it (same inputs, same
    numbers up to float32 round-off, which the shared conformance tests check).

    **Parameters.** A slot holds its target label ``t`` and unconstrained raw parameters:
    ``mask_raw`` of shape ``(H, W)`` (one mask for all colour channels) and ``pattern_raw`` of
    the input shape, kept as one float32 vector ``theta = [mask_raw, pattern_raw]``. With
    ``eps`` = :data:`TANH_EPSILON` and ``(lo, hi)`` the classifier's ``clip_values``:

    1. *Decode*: ``mask = tanh(mask_raw) / (2 - eps) + 0.5`` (in [0, 1]) and
       ``pattern = lo + (tanh(pattern_raw) / (2 - eps) + 0.5) * (hi - lo)`` (in [lo, hi]).
    2. *Stamp* each clean raw image ``x`` of the slot's mini-batch:
       ``x' = (1 - mask) * x + mask * pattern``, computed as ``x + mask * (pattern - x)``, the
       ``(H, W)`` mask broadcast over the channel axis as :func:`core.layout.mask_axes` places
       it. The classifier's preprocessing is applied after stamping, then the model runs in
       inference mode with its weights frozen.
    3. *Loss*: ``ce = mean_b(-log p(t | x'_b))`` where ``log p`` is the log-softmax of the
       outputs, or ``log(max(outputs, PROBABILITY_FLOOR))`` when the model outputs
       probabilities; ``reg`` is the L1 norm (sum), L2 norm (root of the sum of squares) or
       L-infinity norm (max) of the ``(H, W)`` mask, as ``config.norm`` says; the slot's loss
       is ``ce + cost_t * reg``. The gradient of the sum of the slots' losses gives each slot
       the gradient of its own loss (slots share no parameters).
    4. *Adam*, per slot, on ``theta`` with ``lr = config.learning_rate``, ``(b1, b2)`` =
       :data:`ADAM_BETAS` and ``e`` = :data:`ADAM_EPSILON`; each slot has its own moments
       ``m, v`` and update count ``n`` (all zero when the slot is added), so bias correction is
       per slot: ``n += 1; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g**2;
       theta -= lr / (1 - b1**n) * m / (sqrt(v / (1 - b2**n)) + e)``.
    5. *Success*: among the mini-batch's images whose true label is not ``t``, those whose
       stamped version the model (in the forward pass of 3, before the update) classifies as
       ``t``.

    A :meth:`step` runs ``M`` mini-batches, each one forward/backward pass over all slots and
    one Adam update, and returns :class:`StepStats` per slot: ``attack_success_rate`` = the
    step's successes over its images of other labels (0 when there are none), and ``reg`` and
    ``loss`` averaged over the ``M`` mini-batches (each taken before that mini-batch's update).
    """

    @abc.abstractmethod
    def add(self, targets: np.ndarray, mask_raw: np.ndarray, pattern_raw: np.ndarray) -> None:
        """Append labels with their initial raw mask ``(k, H, W)`` and pattern ``(k, *shape)``."""

    @abc.abstractmethod
    def remove(self, slots: np.ndarray) -> None:
        """Drop the labels in ``slots``; the remaining ones keep their order."""

    @abc.abstractmethod
    def step(self, batch_indices: np.ndarray, costs: np.ndarray) -> StepStats:
        """Run one step: ``batch_indices`` has shape ``(M, n_slots, B)``, ``costs`` ``(n_slots,)``.

        Each mini-batch is one forward/backward pass over all slots followed by an Adam update;
        the results are synchronised to the host once, at the end of the step.
        """

    @abc.abstractmethod
    def triggers(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(mask (k, H, W) in [0, 1], pattern (k, *shape) in the raw range)``."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of labels in the stack."""

    def state(self) -> dict[str, np.ndarray]:
        """Host copies of the whole stack, for a checkpoint of the search.

        Keys: ``theta`` ``(k, P)`` float32 raw parameters, ``m`` and ``v`` their Adam moments,
        ``t`` ``(k,)`` float32 per-slot update counts, ``targets`` ``(k,)`` int64 target labels.
        :meth:`load_state` of the same backend restores them bit for bit, so a search continued
        from a checkpoint takes exactly the steps it would have taken without the interruption.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot save its state")

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Replace the whole stack by one saved with :meth:`state`."""
        raise NotImplementedError(f"{type(self).__name__} cannot load a saved state")


class Classifier(abc.ABC):
    """A wrapped model: what the framework-neutral code may ask of it.

    Attributes:
        framework: ``"pytorch"`` or ``"tensorflow"``.
        input_shape: Shape of one input, without the batch axis.
        nb_classes: Number of outputs.
        channels_first: Whether the channel axis comes before the spatial axes.
        clip_values: Raw input range ``(min, max)``.
        output: ``"logits"`` or ``"probabilities"``.
    """

    framework: str
    input_shape: tuple[int, ...]
    nb_classes: int
    channels_first: bool
    clip_values: tuple[float, float]
    output: str

    @property
    def image_shape(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of one input, the shape of a trigger mask."""
        if len(self.input_shape) == 2:
            return tuple(self.input_shape)  # type: ignore[return-value]
        if self.channels_first:
            return tuple(self.input_shape[1:])  # type: ignore[return-value]
        return tuple(self.input_shape[:2])  # type: ignore[return-value]

    @abc.abstractmethod
    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model outputs for raw inputs ``x`` (preprocessing applied inside)."""

    def predict_labels(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class of each input."""
        return self.predict(x, batch_size=batch_size).argmax(axis=1)

    @abc.abstractmethod
    def activation_bytes_per_image(self) -> int:
        """Rough memory that one image's forward and backward pass needs."""

    @abc.abstractmethod
    @contextmanager
    def trigger_session(self, x: np.ndarray, y: np.ndarray, config: ScanConfig
                        ) -> Iterator[TriggerSession]:
        """Open a session for a trigger search over clean data ``x, y``.

        While it is open the model's weights are frozen and it runs in inference mode; on exit,
        even by an exception or ``KeyboardInterrupt``, the model is restored exactly.
        """

    # -- used by mitigation (filtering, pruning, unlearning) and the ART-compatible API --------
    #: Layer spec meaning "the input of the final classification layer" (the default).
    FINAL_LAYER_INPUT = "final_layer_input"

    @abc.abstractmethod
    def layer_names(self) -> list[str]:
        """Names of the model's layers that may be chosen for activations and pruning."""

    def layer_spec_name(self, layer: str | int | None, extra_names: tuple[str, ...] = ()
                        ) -> str | None:
        """Validate a layer spec: ``None`` for the final layer's input, else the layer's name.

        An index counts into :meth:`layer_names`; a name must be one of them (or of
        ``extra_names``, names a backend accepts beyond its listed layers).

        Raises:
            ValueError: If the index is out of range or the name unknown; lists the candidates.
        """
        if layer is None or layer == self.FINAL_LAYER_INPUT:
            return None
        names = self.layer_names()
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -len(names) <= int(layer) < len(names):
                raise InputError(f"layer index {layer} is out of range: the model has "
                                 f"{len(names)} layers ({', '.join(names)})")
            return names[int(layer)]
        if isinstance(layer, str) and layer and (layer in names or layer in extra_names):
            return layer
        raise InputError(f"unknown layer {layer!r}; candidates are: {', '.join(names)} "
                         f"(or None for the input of the final classification layer)")

    @abc.abstractmethod
    def neuron_activations(self, x: np.ndarray, layer: str | int | None = None,
                           batch_size: int = 256) -> np.ndarray:
        """Per-neuron activations ``(N, neurons)`` of raw inputs ``x`` in one layer.

        ``layer`` is a name or index from :meth:`layer_names` (its output), or ``None`` /
        :attr:`FINAL_LAYER_INPUT` for the input of the final classification layer. Convolutional
        outputs are averaged over space, so a channel is one neuron. An unknown layer raises
        ``ValueError`` listing the candidates.
        """

    @abc.abstractmethod
    def set_pruned_neurons(self, layer: str | int | None, neurons: np.ndarray) -> None:
        """Make the given neurons of ``layer`` output zero (replacing any earlier pruning).

        Reversible: weights are not touched (a mask or hook), ``neurons=[]`` undoes it, and
        :meth:`save` writes the pruning into the saved weights.
        """

    @abc.abstractmethod
    def copy(self) -> Classifier:
        """An independent copy (model weights included) with the same settings."""

    @abc.abstractmethod
    def fine_tune(self, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float,
                  batch_size: int, seed: int) -> None:
        """Train the model in place on raw inputs ``x`` and integer labels ``y``.

        Uses the framework's own training loop, with training-mode layers (BatchNorm, dropout)
        while training; the model is left in inference mode.
        """

    @abc.abstractmethod
    def save(self, path: str) -> str:
        """Save the model in its framework's native format; returns the path written."""

    def describe(self) -> dict[str, Any]:
        """Model facts echoed in reports."""
        return {
            "framework": self.framework,
            "input_shape": list(self.input_shape),
            "nb_classes": int(self.nb_classes),
            "channels_first": bool(self.channels_first),
            "clip_values": [float(self.clip_values[0]), float(self.clip_values[1])],
            "output": self.output,
        }
