"""ART-compatible Neural Cleanse estimators: ``KerasNeuralCleanse`` and ``PyTorchNeuralCleanse``.

They offer the API of ``art.estimators.poison_mitigation.neural_cleanse.KerasNeuralCleanse``
(the constructor arguments, defaults, methods and properties) on top of this package's trigger
search, outlier test and mitigations, without ART's known defects. The two classes share all
their logic (:class:`NeuralCleanseEstimator`); only the construction of the framework backend
differs.

Like ART's, these classes act on the model they wrap: ``fit``, ``mitigate(["pruning"])`` and
``mitigate(["unlearning"])`` change its weights. Use :func:`neuralcleanse.mitigate` to repair a
copy instead.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.core.checks import as_label_vector, class_counts, infer_clip_values
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError, one_line
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.search.reverse import reverse_engineer

#: Environment variable naming the folder where :meth:`NeuralCleanseEstimator.save` writes
#: when no ``path`` is given.
DATA_PATH_ENV = "NEURALCLEANSE_DATA_PATH"

#: The Neural Cleanse parameters of the constructor, in the seed's order.
NC_PARAMS = ("steps", "init_cost", "norm", "learning_rate", "attack_success_threshold",
             "patience", "early_stop", "early_stop_threshold", "early_stop_patience",
             "cost_multiplier", "batch_size")

#: The mitigation types :meth:`NeuralCleanseEstimator.mitigate` accepts.
MITIGATION_TYPES = ("unlearning", "pruning", "filtering")


def default_data_path() -> Path:
    """Folder used by ``save`` without a path.

    It is ``$NEURALCLEANSE_DATA_PATH`` when set, else ``~/.neuralcleanse/data``.
    """
    env = os.environ.get(DATA_PATH_ENV)
    return Path(env).expanduser() if env else Path.home() / ".neuralcleanse" / "data"


def _as_python_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _defence_list(value: Any, name: str) -> list[Callable[..., Any]]:
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not callable(item):
            raise InputTypeError(f"{name} must be callables (or a list of them); got "
                            f"{type(item).__name__}")
    return items


def _check_clip_values(value: Any) -> tuple[float, float] | None:
    """``None`` or a ``(min, max)`` pair of scalars (constant arrays are accepted)."""
    if value is None:
        return None
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise InputError(f"clip_values must be a (min, max) pair (got {value!r})") from None
    bounds = []
    for side, bound in (("min", lo), ("max", hi)):
        arr = np.asarray(bound, dtype=np.float64)
        if arr.size == 0 or not np.all(arr == arr.flat[0]):
            raise InputError(f"clip_values {side} must be one number for all features; "
                             "per-feature bounds are not supported by the trigger search")
        if not math.isfinite(float(arr.flat[0])):
            raise InputError(f"clip_values {side} must be finite (got {bound!r})")
        bounds.append(float(arr.flat[0]))
    if not bounds[0] < bounds[1]:
        raise InputError(f"clip_values must be (min, max) with min < max (got {value!r})")
    return bounds[0], bounds[1]


def _check_positive_int(name: str, value: Any) -> int:
    value = _as_python_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1 (got {value!r})")
    return value


def _to_numpy(value: Any) -> np.ndarray:
    """An array from numpy, a framework tensor or a nested sequence."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


class NeuralCleanseEstimator:
    """The framework-neutral half of the ART-compatible Neural Cleanse estimators.

    Subclasses name their framework-specific constructor parameters in ``_BACKEND_PARAMS`` and
    build the backend in :meth:`_make_backend`. Every other method is shared.
    """

    #: Parameters whose change needs a new backend.
    _BACKEND_PARAMS: tuple[str, ...] = ()

    def __init__(self, **params: Any) -> None:
        self._learning_phase: bool | None = None
        self._scan: ScanResult | None = None
        self._filter: Any = None
        self._reports: list[Any] = []
        self._params: dict[str, Any] = {}
        self._clf: DifferentiableClassifier | None = None
        self._configure(params, rebuild=True)

    # -- parameters ----------------------------------------------------------------------------
    def _make_backend(self, params: dict[str, Any],
                      clip: tuple[float, float]) -> DifferentiableClassifier:
        raise NotImplementedError

    def _carry_backend_state(self, old: DifferentiableClassifier,
                             new: DifferentiableClassifier) -> None:
        """Hook for state a new backend must inherit from the old one (nothing by default)."""

    def _configure(self, changes: dict[str, Any], rebuild: bool) -> None:
        params = {**self._params, **{k: _as_python_number(v) for k, v in changes.items()}}
        config = ScanConfig.art_defaults(**{name: params[name] for name in NC_PARAMS},
                                         progress=False)
        clip = _check_clip_values(params["clip_values"])
        pre = _defence_list(params["preprocessing_defences"], "preprocessing_defences")
        post = _defence_list(params["postprocessing_defences"], "postprocessing_defences")
        clf = self._clf
        if rebuild or clf is None:
            new = self._make_backend(params, clip or (0.0, 1.0))
            if clf is not None:
                self._carry_backend_state(clf, new)
            clf = new
        self._params, self._config, self._clf = params, config, clf
        self._clip, self._pre_defences, self._post_defences = clip, pre, post

    def get_params(self) -> dict[str, Any]:
        """Get all parameters and their values of this estimator.

        Returns:
            A dictionary of parameter names (the constructor's) to their values.
        """
        return dict(self._params)

    def set_params(self, **kwargs: Any) -> None:
        """Check and set parameters; nothing changes when one of them is invalid.

        Args:
            **kwargs: Constructor parameters and their new values.

        Raises:
            ValueError: On an unknown parameter or an invalid value (naming the parameter).
        """
        unknown = sorted(set(kwargs) - set(self._params))
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)}; valid parameters are "
                             f"{', '.join(self._params)}")
        rebuild = any(name in self._BACKEND_PARAMS for name in kwargs)
        self._configure(kwargs, rebuild=rebuild)

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- properties ----------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The wrapped framework model."""
        return self._params["model"]

    @property
    def classifier(self) -> DifferentiableClassifier:
        """The backend wrapper of the model (this package's interface)."""
        assert self._clf is not None
        return self._clf

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self.classifier.input_shape)

    @property
    def nb_classes(self) -> int:
        """Number of output classes."""
        return int(self.classifier.nb_classes)

    @property
    def clip_values(self) -> tuple[float, float] | None:
        """The clip values ``(min, max)`` of the input samples, or ``None`` when not given.

        Without clip values the trigger search uses [0, 1] or [0, 255], whichever the
        validation data fits.
        """
        return self._clip

    @property
    def channels_first(self) -> bool:
        """Whether the colour channels come before the spatial axes."""
        return bool(self.classifier.channels_first)

    @property
    def channel_index(self) -> int:
        """Index of the axis holding the colour channels in a batch of samples."""
        return 1 if self.channels_first else len(self.input_shape)

    @property
    def layer_names(self) -> list[str]:
        """Names of the model's layers (leaf modules for PyTorch), in model order.

        Unlike ART, the output layer is listed too, so that its activations can be read.
        """
        return self.classifier.layer_names()

    @property
    def learning_phase(self) -> bool | None:
        """``True`` (training) or ``False`` (inference) as set by the user, else ``None``.

        It selects the layers' mode in ``predict``, the gradients, ``loss`` and
        ``get_activations``; ``None`` means inference. The trigger search always runs in
        inference mode.
        """
        return self._learning_phase

    @property
    def scan_result(self) -> ScanResult | None:
        """The full result of the last :meth:`outlier_detection` (``None`` before one)."""
        return self._scan

    def set_learning_phase(self, train: bool) -> None:
        """Set the learning phase: ``True`` for training, ``False`` for prediction.

        Raises:
            TypeError: If ``train`` is not a bool.
        """
        if not isinstance(train, (bool, np.bool_)):
            raise InputTypeError(f"train must be True or False (got {train!r})")
        self._learning_phase = bool(train)

    def _training(self, training_mode: bool | None = None) -> bool:
        if training_mode is not None:
            return bool(training_mode)
        return bool(self._learning_phase)

    # -- input checks and defences -------------------------------------------------------------
    def _inputs(self, x: Any, name: str = "x", allow_empty: bool = True) -> np.ndarray:
        arr = _to_numpy(x)
        if arr.dtype.kind not in "fiub":
            raise InputError(f"{name} must be a numeric array (got dtype {arr.dtype})")
        shape = self.input_shape
        if arr.ndim == len(shape) == 3:  # single-channel images given as (N, H, W)
            if self.channels_first and shape[0] == 1 and tuple(arr.shape[1:]) == shape[1:]:
                arr = arr[:, None]
            elif not self.channels_first and shape[-1] == 1 and \
                    tuple(arr.shape[1:]) == shape[:-1]:
                arr = arr[..., None]
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
            raise InputError(f"{name} must have shape (N, {', '.join(map(str, shape))}); got "
                             f"{arr.shape}")
        if not allow_empty and len(arr) == 0:
            raise InputError(f"{name} is empty")
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise InputError(f"{name} contains NaN or infinite values")
        return out

    def _labels(self, y: Any, n: int, name: str = "y") -> np.ndarray:
        try:
            return as_label_vector(_to_numpy(y), n, self.nb_classes)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from None

    def _defend(self, x: np.ndarray, y: Any = None, fit: bool = False
                ) -> tuple[np.ndarray, Any, list[tuple[Any, np.ndarray]]]:
        """Apply the preprocessing defences; returns ``(x, y, [(defence, its input)])``."""
        trace = []
        flag = "apply_fit" if fit else "apply_predict"
        for defence in self._pre_defences:
            if not getattr(defence, flag, True):
                continue
            trace.append((defence, x))
            x, y = defence(x, y)
            x = np.asarray(x, dtype=np.float32)
        return x, y, trace

    @staticmethod
    def _defence_gradient(grad: np.ndarray, trace: list[tuple[Any, np.ndarray]]) -> np.ndarray:
        """Carry a gradient back through the defences (identity when one has no estimate)."""
        for defence, x_in in reversed(trace):
            estimate = getattr(defence, "estimate_gradient", None)
            if estimate is not None:
                grad = np.asarray(estimate(x_in, grad), dtype=np.float32)
        return grad

    # -- classifier API ------------------------------------------------------------------------
    def abstain(self) -> np.ndarray:
        """Abstain from a prediction.

        Returns:
            A row of zeros, one per class.
        """
        return np.zeros(self.nb_classes, dtype=np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool | None = None,
                **kwargs: Any) -> np.ndarray:
        """Predict a batch, abstaining (a row of zeros) on inputs the active filter refuses.

        Args:
            x: Raw input samples.
            batch_size: Batch size.
            training_mode: Layers' mode; defaults to :attr:`learning_phase` (inference if unset).
            **kwargs: None accepted (an unknown argument raises ``TypeError``).

        Returns:
            Predictions of shape ``(nb_inputs, nb_classes)``.
        """
        if kwargs:
            raise InputTypeError(f"predict() got unexpected argument(s): {', '.join(kwargs)}")
        batch_size = _check_positive_int("batch_size", batch_size)
        images = self._inputs(x)
        defended, _, _ = self._defend(images)
        preds = self.classifier.outputs(defended, batch_size=batch_size,
                                        training=self._training(training_mode))
        for post in self._post_defences:
            if getattr(post, "apply_predict", True):
                preds = np.asarray(post(preds))
        preds = np.array(preds, dtype=np.float32)
        if self._filter is not None and len(defended):
            preds[self._filter.is_flagged(defended, batch_size=batch_size)] = self.abstain()
        return preds

    def loss(self, x: np.ndarray, y: np.ndarray, reduction: str = "none",
             **kwargs: Any) -> np.ndarray:
        """Compute the loss of the network for samples ``x``.

        The loss is the cross-entropy of the outputs (the log of the probabilities, or of the
        softmax of logits), or the ``loss`` given to ``PyTorchNeuralCleanse``.

        Args:
            x: Raw input samples.
            y: Labels, one-hot ``(N, nb_classes)`` or indices ``(N,)``.
            reduction: ``"none"`` (one value per sample), ``"mean"`` or ``"sum"``.
            **kwargs: None accepted (an unknown argument raises ``TypeError``).

        Returns:
            The losses (float32), a 0-d array for ``"mean"`` and ``"sum"``.
        """
        if reduction not in ("none", "mean", "sum"):
            raise InputError(f"reduction must be 'none', 'mean' or 'sum' (got {reduction!r})")
        if kwargs:
            raise InputTypeError(f"loss() got unexpected argument(s): {', '.join(kwargs)}")
        images = self._inputs(x)
        labels = self._labels(y, len(images))
        defended, _, _ = self._defend(images)
        values = self.classifier.loss_values(defended, labels, training=self._training())
        if reduction == "mean":
            return np.asarray(values.mean(), dtype=np.float32)
        if reduction == "sum":
            return np.asarray(values.sum(), dtype=np.float32)
        return values.astype(np.float32)

    #: The newer name of :meth:`loss` in ART.
    compute_loss = loss

    def loss_gradient(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Gradient of each sample's loss with respect to its raw input.

        Args:
            x: Raw input samples.
            y: Labels, one-hot ``(N, nb_classes)`` or indices ``(N,)``.
            **kwargs: ``training_mode`` overrides :attr:`learning_phase`.

        Returns:
            Gradients of the same shape as ``x``.
        """
        training = self._training(kwargs.pop("training_mode", None))
        if kwargs:
            raise InputTypeError(f"loss_gradient() got unexpected argument(s): {', '.join(kwargs)}")
        images = self._inputs(x)
        labels = self._labels(y, len(images))
        defended, _, trace = self._defend(images)
        grad = self.classifier.loss_gradient(defended, labels, training=training)
        return self._defence_gradient(grad, trace).reshape(images.shape)

    def class_gradient(self, x: np.ndarray, label: int | Sequence[int] | np.ndarray | None = None,
                       **kwargs: Any) -> np.ndarray:
        """Per-class derivatives of the model outputs with respect to the raw inputs.

        Args:
            x: Raw input samples.
            label: ``None`` for every class, an int for that class on every sample, or one
                class per sample (length ``N``).
            **kwargs: ``training_mode`` overrides :attr:`learning_phase`.

        Returns:
            ``(N, nb_classes, *input_shape)`` for ``label=None``, else ``(N, 1, *input_shape)``.
        """
        training = self._training(kwargs.pop("training_mode", None))
        if kwargs:
            raise InputTypeError("class_gradient() got unexpected argument(s): "
                                 f"{', '.join(kwargs)}")
        images = self._inputs(x)
        labels = self._class_labels(label, len(images))
        defended, _, trace = self._defend(images)
        grads = self.classifier.class_gradient(defended, labels, training=training)
        if trace:
            for k in range(grads.shape[1]):
                grads[:, k] = self._defence_gradient(grads[:, k], trace)
        return grads

    def _class_labels(self, label: Any, n: int) -> np.ndarray | None:
        if label is None:
            return None
        label = _as_python_number(label)
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < self.nb_classes:
                raise InputError(f"label must be in 0..{self.nb_classes - 1} (got {label})")
            return np.full(n, label, dtype=np.int64)
        arr = np.asarray(label)
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) != n:
            raise InputError(f"label must be None, an int or one integer class per sample "
                             f"(length {n}); got {label!r}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.nb_classes):
            raise InputError(f"label values must be in 0..{self.nb_classes - 1}")
        return arr.astype(np.int64)

    def custom_loss_gradient(self, nn_function: Any, tensors: Any, input_values: Any,
                             name: str = "default") -> np.ndarray:
        """Gradient of ``nn_function`` with respect to its first input.

        Args:
            nn_function: For Keras, a symbolic tensor computed from ``tensors`` (cached under
                ``name``) or a callable on TensorFlow tensors; for PyTorch, a callable on
                ``torch.Tensor`` inputs. A non-scalar result is summed.
            tensors: The symbolic inputs of ``nn_function`` (Keras).
            input_values: One array per input, where the gradient is evaluated.
            name: Cache key of the compiled function.

        Returns:
            The gradient with respect to the first input, shaped like ``input_values[0]``.
        """
        return self.classifier.custom_loss_gradient(nn_function, tensors, input_values, name)

    def get_activations(self, x: np.ndarray, layer: int | str, batch_size: int = 128,
                        framework: bool = False) -> Any:
        """Output of a layer for input ``x``.

        Args:
            x: Raw input samples.
            layer: Index into :attr:`layer_names` or a layer name.
            batch_size: Batch size.
            framework: Return the framework's tensor instead: the symbolic Keras tensor of the
                layer's output, or the ``torch.Tensor`` of the activations of ``x``.

        Returns:
            The layer's output with the batch as first axis.
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        images = self._inputs(x)
        defended, _, _ = self._defend(images)
        if isinstance(layer, bool) or not isinstance(_as_python_number(layer), (int, str)):
            raise InputTypeError("layer must be an index or a name from layer_names (got "
                                 f"{layer!r})")
        if framework:
            return self.classifier.layer_output_framework(defended, _as_python_number(layer))
        return self.classifier.layer_output(defended, _as_python_number(layer), batch_size,
                                            training=self._training())

    def fit(self, x: np.ndarray, y: np.ndarray, batch_size: int = 128, nb_epochs: int = 20,
            **kwargs: Any) -> None:
        """Fit the classifier on ``(x, y)``.

        Keras models train with their compiled optimiser (a new Adam with lr 1e-3 when not
        compiled); PyTorch models with the ``optimizer`` given to the estimator. The loss is
        the one :meth:`loss` computes.

        Args:
            x: Raw training samples.
            y: Labels, one-hot or indices.
            batch_size: Size of batches.
            nb_epochs: Number of epochs.
            **kwargs: ``shuffle`` (default True) and ``seed`` (default 0) of the batch order;
                ``verbose`` is accepted and ignored (training prints nothing).
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        nb_epochs = _check_positive_int("nb_epochs", nb_epochs)
        shuffle = bool(kwargs.pop("shuffle", True))
        seed = kwargs.pop("seed", 0)
        kwargs.pop("verbose", None)
        self._reject_extra(kwargs, "fit", "shuffle, seed, verbose")
        images = self._inputs(x, allow_empty=False)
        defended, y_def, _ = self._defend(images, _to_numpy(y), fit=True)
        labels = self._labels(y_def, len(defended))
        rng = np.random.default_rng(seed)
        for _ in range(nb_epochs):
            order = rng.permutation(len(defended)) if shuffle else np.arange(len(defended))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                self.classifier.train_batch(defended[idx], labels[idx])

    @staticmethod
    def _reject_extra(kwargs: dict[str, Any], method: str, allowed: str) -> None:
        if "epochs" in kwargs:
            raise InputError(f"{method}(): give the number of epochs as nb_epochs, not in "
                             "kwargs")
        if kwargs:
            raise InputTypeError(f"{method}() got unexpected argument(s) {', '.join(kwargs)}; it "
                            f"accepts {allowed}")

    def fit_generator(self, generator: Any, nb_epochs: int = 20, **kwargs: Any) -> None:
        """Fit the classifier on batches ``(x, y)`` from a generator.

        Accepted generators: ART ``DataGenerator`` objects (``get_batch()``, ``size``,
        ``batch_size``), Keras ``Sequence``/``PyDataset`` objects and other indexable
        sequences of batches, re-iterable objects such as a PyTorch ``DataLoader`` (one pass
        per epoch), and one-shot iterators (give ``steps_per_epoch``).

        Args:
            generator: Source of ``(x, y)`` batches.
            nb_epochs: Number of epochs.
            **kwargs: ``steps_per_epoch``: batches per epoch (required for an iterator).
        """
        nb_epochs = _check_positive_int("nb_epochs", nb_epochs)
        steps = kwargs.pop("steps_per_epoch", None)
        if steps is not None:
            steps = _check_positive_int("steps_per_epoch", steps)
        self._reject_extra(kwargs, "fit_generator", "steps_per_epoch")
        if iter_is_self(generator) and steps is None:
            raise InputError("fit_generator needs steps_per_epoch for a one-shot iterator")
        for _ in range(nb_epochs):
            for batch in _epoch_batches(generator, steps):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise InputError("the generator must yield (x, y) batches")
                images = self._inputs(batch[0], "generator x")
                defended, y_def, _ = self._defend(images, _to_numpy(batch[1]), fit=True)
                self.classifier.train_batch(defended, self._labels(y_def, len(defended),
                                                                   "generator y"))

    def save(self, filename: str, path: str | None = None) -> None:
        """Save the model in its framework's native format.

        Keras models are written as ``.keras`` (``.h5`` when ``filename`` ends with it; a
        missing suffix gets ``.keras``), PyTorch models as a state dict (``torch.save``).
        Pruned neurons are saved as zero weights.

        Args:
            filename: Name of the file.
            path: Folder; defaults to :func:`default_data_path` (``$NEURALCLEANSE_DATA_PATH``
                or ``~/.neuralcleanse/data``).
        """
        if not isinstance(filename, str) or not filename:
            raise InputError(f"filename must be a non-empty string (got {filename!r})")
        folder = Path(path).expanduser() if path is not None else default_data_path()
        self.classifier.save(str(folder / filename))

    # -- Neural Cleanse ------------------------------------------------------------------------
    def _search_data(self, x_val: Any, y_val: Any) -> tuple[np.ndarray, np.ndarray]:
        images = self._inputs(x_val, "x_val", allow_empty=False)
        labels = self._labels(y_val, len(images), "y_val")
        if self._clip is None:
            self.classifier.clip_values = infer_clip_values(images)
        lo, hi = self.classifier.clip_values
        tolerance = 1e-4 * (hi - lo)
        if images.min() < lo - tolerance or images.max() > hi + tolerance:
            raise InputError(f"x_val has values in [{images.min():g}, {images.max():g}], "
                             f"outside clip_values [{lo:g}, {hi:g}]")
        return images, labels

    def _reverse(self, images: np.ndarray, labels: np.ndarray,
                 targets: Sequence[int] | None) -> list[LabelResult]:
        return reverse_engineer(self.classifier, images, labels, self._config, labels=targets)

    def generate_backdoor(self, x_val: np.ndarray, y_val: np.ndarray,
                          y_target: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reverse-engineer the smallest trigger that sends clean images to one label.

        Every call starts from the same seeded initial trigger of that label, never from an
        earlier search's.

        Args:
            x_val: Clean raw validation images.
            y_val: Their labels (one-hot or indices).
            y_target: The target label, as an index or a one-hot vector.

        Returns:
            ``(pattern, mask)``: the pattern in the raw input range with the shape of one input,
            and the mask in [0, 1] of shape ``(H, W)``, shared by all channels.
        """
        target = self._target_label(y_target)
        images, labels = self._search_data(x_val, y_val)
        (result,) = self._reverse(images, labels, [target])
        return result.pattern, result.mask

    def _target_label(self, y_target: Any) -> int:
        value = _as_python_number(y_target)
        if isinstance(value, int) and not isinstance(value, bool):
            target = value
        else:
            arr = np.asarray(value)
            if arr.ndim == 2 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 1 or len(arr) != self.nb_classes or arr.dtype.kind not in "fiub":
                raise InputError(f"y_target must be a label index or a one-hot vector of "
                                 f"length {self.nb_classes} (got {y_target!r})")
            target = int(np.argmax(arr))
        if not 0 <= target < self.nb_classes:
            raise InputError(f"y_target must be in 0..{self.nb_classes - 1} (got {target})")
        return target

    def outlier_detection(self, x_val: np.ndarray, y_val: np.ndarray
                          ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Reverse-engineer every label's trigger and return the suspected backdoor labels.

        A label is suspected when the anomaly index of its mask's L1 norm exceeds 2 (unusually
        small; median absolute deviation test). The whole result stays in :attr:`scan_result`.

        Args:
            x_val: Clean raw validation images.
            y_val: Their labels (one-hot or indices).

        Returns:
            ``[(label, mask, pattern), ...]`` for the suspected labels, in label order.
        """
        started = time.perf_counter()
        images, labels = self._search_data(x_val, y_val)
        results = self._reverse(images, labels, None)
        cfg = self._config
        self._scan = ScanResult.from_labels(
            results, nb_classes=self.nb_classes, anomaly_threshold=cfg.anomaly_threshold,
            config=cfg.to_dict(), model_info=self.classifier.describe(),
            data_info={"n_images": int(len(images)),
                       "class_counts": class_counts(labels, self.nb_classes)},
            versions=_versions(), wall_seconds=time.perf_counter() - started)
        by_label = {r.label: r for r in self._scan.labels}
        return [(label, by_label[label].mask, by_label[label].pattern)
                for label in sorted(self._scan.flagged_labels)]

    def _flagged_triggers(self, x_val: Any, y_val: Any) -> list[LabelResult]:
        if self._scan is None:
            self.outlier_detection(x_val, y_val)
        assert self._scan is not None
        return [r for r in self._scan.labels if r.label in self._scan.flagged_labels]

    def backdoor_examples(self, x_val: np.ndarray, y_val: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stamp the suspected labels' reversed triggers on validation images of other classes.

        Runs :meth:`outlier_detection` first if it has not run yet.

        Args:
            x_val: Clean raw validation images.
            y_val: Their labels (one-hot or indices).

        Returns:
            ``(clean images, the same images stamped, their true labels)``; labels keep the
            format of ``y_val``. For several suspected labels the blocks are concatenated.
        """
        from neuralcleanse.mitigation.stamping import stamped_others

        triggers = self._flagged_triggers(x_val, y_val)
        images = self._inputs(x_val, "x_val", allow_empty=False)
        raw_y = _to_numpy(y_val)
        labels = self._labels(raw_y, len(images), "y_val")
        clean, stamped, true = [], [], []
        for trig in triggers:
            others = np.flatnonzero(labels != trig.label)
            xs, _ = stamped_others(images, labels, trig, self.channels_first)
            clean.append(images[others])
            stamped.append(xs)
            true.append(raw_y[others])
        if not triggers:
            return (images[:0], images[:0], raw_y[:0])
        return np.concatenate(clean), np.concatenate(stamped), np.concatenate(true)

    def check_backdoor_effective(self, backdoor_data: np.ndarray,
                                 backdoor_labels: np.ndarray) -> bool:
        """Whether the backdoor still works: some stamped input is not classified correctly.

        Predicted labels (argmax of the outputs) are compared with the correct labels; an
        abstention (a row of zeros from the input filter) counts as correct, since the
        backdoor did not get through.

        Args:
            backdoor_data: Inputs with a trigger stamped on them.
            backdoor_labels: Their correct labels (one-hot or indices).

        Returns:
            ``True`` if any stamped input is misclassified.
        """
        images = self._inputs(backdoor_data, "backdoor_data")
        labels = self._labels(backdoor_labels, len(images), "backdoor_labels")
        preds = self.predict(images)
        abstained = ~preds.any(axis=1)
        wrong = (preds.argmax(axis=1) != labels) & ~abstained
        return bool(wrong.any())

    def mitigate(self, x_val: np.ndarray, y_val: np.ndarray,
                 mitigation_types: Sequence[str]) -> None:
        """Mitigate the suspected backdoors on the wrapped model, in the order given.

        ``"unlearning"`` fine-tunes the model on ``x_val`` with 20 % of it stamped with the
        reversed triggers (true labels kept); ``"pruning"`` zeroes, reversibly until saved, the
        neurons of the final layer's input that the triggers excite (at most 30 %);
        ``"filtering"`` makes :meth:`predict` abstain (a row of zeros) on inputs that excite
        them. Runs :meth:`outlier_detection` first if it has not run yet; with no suspected
        label there is nothing to do and a warning says so. Each step's measurements are kept
        in :attr:`mitigation_reports`.

        Args:
            x_val: Clean raw validation images.
            y_val: Their labels (one-hot or indices).
            mitigation_types: Any of ``"unlearning"``, ``"pruning"``, ``"filtering"``.
        """
        from neuralcleanse.mitigation import filter_inputs, prune, unlearn

        types = [mitigation_types] if isinstance(mitigation_types, str) else \
            list(mitigation_types)
        bad = [t for t in types if t not in MITIGATION_TYPES]
        if bad or not types:
            raise InputError(f"mitigation_types must be a non-empty list of "
                             f"{', '.join(map(repr, MITIGATION_TYPES))} (got "
                             f"{mitigation_types!r})")
        images, labels = self._search_data(x_val, y_val)
        triggers = self._flagged_triggers(images, labels)
        if not triggers:
            warnings.warn("no label was flagged as a backdoor target: nothing to mitigate",
                          UserWarning, stacklevel=2)
            return None
        reports = self._reports
        for kind in types:
            if kind == "unlearning":
                reports.append(unlearn(self.classifier, images, labels, triggers))
            elif kind == "pruning":
                reports.append(prune(self.classifier, images, labels, triggers))
            else:
                self._filter = filter_inputs(self.classifier, images, labels, triggers)
                reports.append(self._filter.report)
        return None

    @property
    def mitigation_reports(self) -> list[Any]:
        """Measurements of every mitigation applied since the last :meth:`reset`."""
        return list(self._reports)

    def reset(self) -> None:
        """Reset the state of the defence: forget the scan and switch input filtering off.

        The settings (learning rate included) and the model are left as they are; pruning and
        unlearning, already written into the model, stay.
        """
        self._scan = None
        self._filter = None
        self._reports = []


def iter_is_self(obj: Any) -> bool:
    """Whether ``obj`` is a one-shot iterator (its ``iter()`` is itself)."""
    try:
        return iter(obj) is obj
    except TypeError:
        return False


def _epoch_batches(generator: Any, steps: int | None) -> Iterator[Any]:
    """The batches of one epoch of a generator (see ``fit_generator``)."""
    if hasattr(generator, "get_batch") and hasattr(generator, "size"):
        count = steps or math.ceil(generator.size / generator.batch_size)
        for _ in range(count):
            yield generator.get_batch()
        return
    if hasattr(generator, "__len__") and hasattr(generator, "__getitem__"):
        count = steps or len(generator)
        for i in range(count):
            yield generator[i % len(generator)]
        if hasattr(generator, "on_epoch_end"):
            generator.on_epoch_end()
        return
    if not isinstance(generator, Iterable):
        raise InputTypeError(f"generator must be an ART DataGenerator, a sequence of batches or an "
                        f"iterable of (x, y) batches (got {type(generator).__name__})")
    for i, batch in enumerate(generator):
        if steps is not None and i >= steps:
            return
        yield batch


def _versions() -> dict[str, str]:
    from neuralcleanse.frontends.api import versions

    return versions()


def _warn_output_kind(clf: DifferentiableClassifier, use_logits: bool) -> None:
    """Warn when a probe's outputs contradict ``use_logits``."""
    lo, hi = clf.clip_values
    probe = np.random.default_rng(0).uniform(lo, hi, (8, *clf.input_shape)).astype(np.float32)
    out = clf.predict(probe)
    probabilities = bool(np.all(out >= -1e-6) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    if use_logits and probabilities:
        warnings.warn("use_logits=True but the model's outputs are probability rows; pass "
                      "use_logits=False so that the loss takes their logarithm", UserWarning,
                      stacklevel=4)
    elif not use_logits and not probabilities:
        warnings.warn("use_logits=False but the model's outputs are not probabilities (rows "
                      "of non-negative values summing to 1); pass use_logits=True",
                      UserWarning, stacklevel=4)


def _check_nb_classes(clf: DifferentiableClassifier, shape: tuple[int, ...], nb: int) -> None:
    """Refuse an ``nb_classes`` that differs from the number of scores the model returns."""
    lo, hi = clf.clip_values
    probe = np.random.default_rng(0).uniform(lo, hi, (2, *shape)).astype(np.float32)
    try:
        out = np.asarray(clf.predict(probe))
    except Exception as exc:  # noqa: BLE001 - the model rejected the input shape
        raise InputError(f"the model could not run on inputs of shape {(2, *shape)}: "
                         f"{one_line(exc)}") from None
    width = out.shape[1] if out.ndim == 2 else None
    if width != nb:
        raise InputError(f"nb_classes={nb} but the model returns "
                         f"{width if width is not None else f'outputs of shape {out.shape}'} "
                         "scores per input; give the model's number of outputs, or leave "
                         "nb_classes out to count them")


class KerasNeuralCleanse(NeuralCleanseEstimator):
    """Neural Cleanse for Keras models (Keras 3 on TensorFlow, or tf.keras / tf_keras).

    The signature and defaults are those of ART's ``KerasNeuralCleanse``. One optimisation
    step is one pass over ``x_val`` in mini-batches of ``batch_size``.

    Args:
        model: The Keras model.
        use_logits: True if the model outputs logits, False for probabilities (a warning is
            given when the outputs contradict it).
        channels_first: Whether inputs are channels first.
        clip_values: Raw input range ``(min, max)``; ``None`` infers [0, 1] or [0, 255] from
            the validation data of a search.
        preprocessing_defences: Callables ``defence(x, y) -> (x, y)`` (e.g. ART preprocessors)
            applied before the model in ``predict``, ``fit``, losses and gradients.
        postprocessing_defences: Callables ``post(preds) -> preds`` applied in ``predict``.
        preprocessing: ``(subtrahend, divisor)`` applied to raw inputs (after a trigger is
            stamped); a callable on tensors is accepted too.
        input_layer: The model input that takes the images (multi-input models).
        output_layer: The model output that holds the class scores (multi-output models).
        steps: Maximum optimisation steps per label.
        init_cost: Cost of the mask norm once switched on.
        norm: Mask norm penalised: 1, 2 or ``np.inf``.
        learning_rate: Adam learning rate.
        attack_success_threshold: Attack success rate a trigger must reach.
        patience: Steps in a row before the cost changes.
        early_stop: Whether a label may stop early.
        early_stop_threshold: Relative improvement below which a step counts as none.
        early_stop_patience: Steps without improvement before stopping.
        cost_multiplier: Cost factor up (and ``** 1.5`` down).
        batch_size: Mini-batch size of the search.
    """

    _BACKEND_PARAMS = ("model", "use_logits", "channels_first", "clip_values", "preprocessing",
                       "input_layer", "output_layer")

    def __init__(self, model: Any, use_logits: bool = False, channels_first: bool = False,
                 clip_values: Any = None, preprocessing_defences: Any = None,
                 postprocessing_defences: Any = None, preprocessing: Any = (0, 1),
                 input_layer: int = 0, output_layer: int = 0, steps: int = 1000,
                 init_cost: float = 0.001, norm: int | float = 2, learning_rate: float = 0.1,
                 attack_success_threshold: float = 0.99, patience: int = 5,
                 early_stop: bool = True, early_stop_threshold: float = 0.99,
                 early_stop_patience: int = 10, cost_multiplier: float = 1.5,
                 batch_size: int = 32) -> None:
        super().__init__(
            model=model, use_logits=use_logits, channels_first=channels_first,
            clip_values=clip_values, preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences, preprocessing=preprocessing,
            input_layer=input_layer, output_layer=output_layer, steps=steps,
            init_cost=init_cost, norm=norm, learning_rate=learning_rate,
            attack_success_threshold=attack_success_threshold, patience=patience,
            early_stop=early_stop, early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience, cost_multiplier=cost_multiplier,
            batch_size=batch_size)

    def _make_backend(self, params: dict[str, Any],
                      clip: tuple[float, float]) -> DifferentiableClassifier:
        from neuralcleanse.backends.tensorflow.classifier import KerasClassifier

        for name in ("use_logits", "channels_first"):
            if not isinstance(params[name], (bool, np.bool_)):
                raise InputError(f"{name} must be True or False (got {params[name]!r})")
        clf = KerasClassifier(params["model"], output="logits" if params["use_logits"]
                              else "probabilities", channels_first=bool(params["channels_first"]),
                              clip_values=clip, preprocessing=params["preprocessing"],
                              input_layer=params["input_layer"],
                              output_layer=params["output_layer"])
        _warn_output_kind(clf, bool(params["use_logits"]))
        return clf

    def _carry_backend_state(self, old: DifferentiableClassifier,
                             new: DifferentiableClassifier) -> None:
        if old.model is new.model:  # the pruning record of the same weights
            new._pruned = old._pruned  # type: ignore[attr-defined]
            new._optimizer = old._optimizer  # type: ignore[attr-defined]


class PyTorchNeuralCleanse(NeuralCleanseEstimator):
    """Neural Cleanse for PyTorch models (``torch.nn.Module``), with the same API.

    Args:
        model: The PyTorch model.
        input_shape: Shape of one raw input, e.g. ``(1, 28, 28)``.
        nb_classes: Number of outputs (found with one forward pass when omitted).
        loss: Loss ``loss(outputs, integer_labels)`` for ``fit`` and the gradients, e.g.
            ``torch.nn.CrossEntropyLoss()``; default: cross-entropy of the outputs.
        optimizer: Optimiser over the model's parameters, needed by ``fit``.
        use_logits: Whether the model outputs logits; ``None`` tells from a probe batch
            (probability rows mean probabilities).
        channels_first: Whether inputs are channels first (PyTorch's convention).
        clip_values: Raw input range ``(min, max)``; ``None`` infers it from the validation
            data of a search.
        preprocessing_defences: Callables ``defence(x, y) -> (x, y)``.
        postprocessing_defences: Callables ``post(preds) -> preds``.
        preprocessing: ``(subtrahend, divisor)`` applied to raw inputs (after stamping), or a
            callable on tensors.
        device: Where to compute (default: where the model's parameters are).
        steps: See :class:`KerasNeuralCleanse` for this and the other search parameters.
        init_cost: Cost of the mask norm once switched on.
        norm: Mask norm penalised: 1, 2 or ``np.inf``.
        learning_rate: Adam learning rate.
        attack_success_threshold: Attack success rate a trigger must reach.
        patience: Steps in a row before the cost changes.
        early_stop: Whether a label may stop early.
        early_stop_threshold: Relative improvement below which a step counts as none.
        early_stop_patience: Steps without improvement before stopping.
        cost_multiplier: Cost factor up (and ``** 1.5`` down).
        batch_size: Mini-batch size of the search.
    """

    _BACKEND_PARAMS = ("model", "input_shape", "nb_classes", "loss", "optimizer", "use_logits",
                       "channels_first", "clip_values", "preprocessing", "device")

    def __init__(self, model: Any, input_shape: tuple[int, ...], nb_classes: int | None = None,
                 loss: Any = None, optimizer: Any = None, use_logits: bool | None = None,
                 channels_first: bool = True, clip_values: Any = None,
                 preprocessing_defences: Any = None, postprocessing_defences: Any = None,
                 preprocessing: Any = (0, 1), device: Any = None, steps: int = 1000,
                 init_cost: float = 0.001, norm: int | float = 2, learning_rate: float = 0.1,
                 attack_success_threshold: float = 0.99, patience: int = 5,
                 early_stop: bool = True, early_stop_threshold: float = 0.99,
                 early_stop_patience: int = 10, cost_multiplier: float = 1.5,
                 batch_size: int = 32) -> None:
        super().__init__(
            model=model, input_shape=input_shape, nb_classes=nb_classes, loss=loss,
            optimizer=optimizer, use_logits=use_logits, channels_first=channels_first,
            clip_values=clip_values, preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences, preprocessing=preprocessing,
            device=device, steps=steps, init_cost=init_cost, norm=norm,
            learning_rate=learning_rate, attack_success_threshold=attack_success_threshold,
            patience=patience, early_stop=early_stop, early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience, cost_multiplier=cost_multiplier,
            batch_size=batch_size)

    def _make_backend(self, params: dict[str, Any],
                      clip: tuple[float, float]) -> DifferentiableClassifier:
        from neuralcleanse.backends.torch.differentiable import TorchDifferentiableClassifier

        if not isinstance(params["channels_first"], (bool, np.bool_)):
            raise InputError(f"channels_first must be True or False (got "
                             f"{params['channels_first']!r})")
        use_logits = params["use_logits"]
        if use_logits is not None and not isinstance(use_logits, (bool, np.bool_)):
            raise InputError(f"use_logits must be True, False or None (got {use_logits!r})")
        try:
            shape = tuple(int(d) for d in params["input_shape"])
        except (TypeError, ValueError):
            raise InputError(f"input_shape must be a tuple of ints (got "
                             f"{params['input_shape']!r})") from None
        nb = params["nb_classes"]
        if nb is not None:
            nb = _check_positive_int("nb_classes", nb)
        clf = TorchDifferentiableClassifier(
            params["model"], shape, loss=params["loss"], optimizer=params["optimizer"],
            output="logits" if use_logits in (None, True) else "probabilities",
            channels_first=bool(params["channels_first"]), clip_values=clip,
            preprocessing=params["preprocessing"], device=params["device"], nb_classes=nb)
        if nb is not None:
            _check_nb_classes(clf, shape, nb)
        if use_logits is None:
            lo, hi = clip
            probe = np.random.default_rng(0).uniform(lo, hi, (8, *shape)).astype(np.float32)
            out = clf.predict(probe)
            if np.all(out >= -1e-6) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
                clf.output = "probabilities"
        else:
            _warn_output_kind(clf, bool(use_logits))
        return clf
