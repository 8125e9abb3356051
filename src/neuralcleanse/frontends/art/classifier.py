"""The classifier half of the ART-compatible estimators: ART's classifier surface.

:class:`ArtClassifier` offers the properties, predictions, losses, gradients, activations,
training and saving of an ART classifier over a backend
(:class:`~neuralcleanse.backends.differentiable.DifferentiableClassifier`), with ART's
pre- and postprocessing defences applied around it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.frontends.art import defences
from neuralcleanse.frontends.art.base import ConfiguredEstimator, P
from neuralcleanse.frontends.art.generators import epoch_batches, reject_extra
from neuralcleanse.frontends.art.inputs import class_labels, label_vector, model_inputs, to_numpy
from neuralcleanse.frontends.art.parameters import check_positive_int, python_scalar

#: Environment variable naming the folder where ``save`` writes when no ``path`` is given.
DATA_PATH_ENV = "NEURALCLEANSE_DATA_PATH"


def default_data_path() -> Path:
    """Folder used by ``save`` without a path.

    It is ``$NEURALCLEANSE_DATA_PATH`` when set, else ``~/.neuralcleanse/data``.
    """
    env = os.environ.get(DATA_PATH_ENV)
    return Path(env).expanduser() if env else Path.home() / ".neuralcleanse" / "data"


class ArtClassifier(ConfiguredEstimator[P]):
    """An ART classifier's surface over a backend; subclasses say how the backend is built.

    Args:
        parameters: The checked constructor arguments of the subclass.
    """

    def __init__(self, parameters: P) -> None:
        super().__init__(parameters)
        self._learning_phase: bool | None = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(self._clf.input_shape)

    @property
    def nb_classes(self) -> int:
        """Number of output classes."""
        return int(self._clf.nb_classes)

    @property
    def channels_first(self) -> bool:
        """Whether the colour channels come before the spatial axes."""
        return bool(self._clf.channels_first)

    @property
    def channel_index(self) -> int:
        """Index of the axis holding the colour channels in a batch of samples."""
        return 1 if self.channels_first else len(self.input_shape)

    @property
    def layer_names(self) -> list[str]:
        """Names of the model's layers (leaf modules for PyTorch), in model order.

        Unlike ART, the output layer is listed too, so that its activations can be read.
        """
        return self._clf.layer_names()

    @property
    def learning_phase(self) -> bool | None:
        """``True`` (training) or ``False`` (inference) as set by the user, else ``None``.

        It selects the layers' mode in ``predict``, the gradients, ``loss`` and
        ``get_activations``; ``None`` means inference. The trigger search always runs in
        inference mode.
        """
        return self._learning_phase

    def set_learning_phase(self, train: bool) -> None:
        """Set the learning phase: ``True`` for training, ``False`` for prediction.

        Raises:
            InputTypeError: If ``train`` is not a bool.
        """
        if not isinstance(train, (bool, np.bool_)):
            raise InputTypeError(f"train must be True or False (got {train!r})")
        self._learning_phase = bool(train)

    def _training(self, training_mode: bool | None = None) -> bool:
        if training_mode is not None:
            return bool(training_mode)
        return bool(self._learning_phase)

    # -- inputs --------------------------------------------------------------------------------
    def _inputs(self, x: Any, name: str = "x", allow_empty: bool = True) -> np.ndarray:
        return model_inputs(x, self.input_shape, self.channels_first, name, allow_empty)

    def _labels(self, y: Any, n: int, name: str = "y") -> np.ndarray:
        return label_vector(y, n, self.nb_classes, name)

    def _preprocess(self, x: np.ndarray, y: Any = None, fit: bool = False
                    ) -> tuple[np.ndarray, Any, defences.Trace]:
        return defences.preprocess(self._parameters.preprocessing_defences, x, y, fit)

    # -- classifier API ------------------------------------------------------------------------
    def abstain(self) -> np.ndarray:
        """Abstain from a prediction.

        Returns:
            A row of zeros, one per class.
        """
        return np.zeros(self.nb_classes, dtype=np.float32)

    def predict(self, x: np.ndarray, batch_size: int = 128, training_mode: bool | None = None,
                **kwargs: Any) -> np.ndarray:
        """Predict a batch, abstaining (a row of zeros) on inputs an active input filter refuses.

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
        batch_size = check_positive_int("batch_size", batch_size)
        defended, _, _ = self._preprocess(self._inputs(x))
        preds = self._clf.outputs(defended, batch_size=batch_size,
                                  training=self._training(training_mode))
        preds = defences.postprocess(self._parameters.postprocessing_defences, preds)
        return self._after_predict(defended, np.array(preds, dtype=np.float32), batch_size)

    def _after_predict(self, defended: np.ndarray, preds: np.ndarray,
                       batch_size: int) -> np.ndarray:
        """Hook on the predictions of a defended batch (the detector's input filter)."""
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
        defended, _, _ = self._preprocess(images)
        values = self._clf.loss_values(defended, labels, training=self._training())
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
            raise InputTypeError("loss_gradient() got unexpected argument(s): "
                                 f"{', '.join(kwargs)}")
        images = self._inputs(x)
        labels = self._labels(y, len(images))
        defended, _, trace = self._preprocess(images)
        grad = self._clf.loss_gradient(defended, labels, training=training)
        return defences.gradient_through(grad, trace).reshape(images.shape)

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
        labels = class_labels(label, len(images), self.nb_classes)
        defended, _, trace = self._preprocess(images)
        grads = self._clf.class_gradient(defended, labels, training=training)
        if trace:
            for k in range(grads.shape[1]):
                grads[:, k] = defences.gradient_through(grads[:, k], trace)
        return grads

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
        return self._clf.custom_loss_gradient(nn_function, tensors, input_values, name)

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
        batch_size = check_positive_int("batch_size", batch_size)
        defended, _, _ = self._preprocess(self._inputs(x))
        layer = python_scalar(layer)
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise InputTypeError("layer must be an index or a name from layer_names (got "
                                 f"{layer!r})")
        if framework:
            return self._clf.layer_output_framework(defended, layer)
        return self._clf.layer_output(defended, layer, batch_size, training=self._training())

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
        batch_size = check_positive_int("batch_size", batch_size)
        nb_epochs = check_positive_int("nb_epochs", nb_epochs)
        shuffle = bool(kwargs.pop("shuffle", True))
        seed = kwargs.pop("seed", 0)
        kwargs.pop("verbose", None)
        reject_extra(kwargs, "fit", "shuffle, seed, verbose")
        images = self._inputs(x, allow_empty=False)
        defended, y_def, _ = self._preprocess(images, to_numpy(y), fit=True)
        labels = self._labels(y_def, len(defended))
        rng = np.random.default_rng(seed)
        for _ in range(nb_epochs):
            order = rng.permutation(len(defended)) if shuffle else np.arange(len(defended))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                self._clf.train_batch(defended[idx], labels[idx])

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
        nb_epochs = check_positive_int("nb_epochs", nb_epochs)
        steps = kwargs.pop("steps_per_epoch", None)
        if steps is not None:
            steps = check_positive_int("steps_per_epoch", steps)
        reject_extra(kwargs, "fit_generator", "steps_per_epoch")
        for _ in range(nb_epochs):
            for batch in epoch_batches(generator, steps):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise InputError("the generator must yield (x, y) batches")
                images = self._inputs(batch[0], "generator x")
                defended, y_def, _ = self._preprocess(images, to_numpy(batch[1]), fit=True)
                self._clf.train_batch(defended, self._labels(y_def, len(defended),
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
        self._clf.save(str(folder / filename))
