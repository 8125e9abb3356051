"""``PyTorchNeuralCleanse``: the same estimator for ``torch.nn.Module`` models."""

from __future__ import annotations

from typing import Any

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.core.checks import rows_are_probabilities
from neuralcleanse.frontends.art.estimator import NeuralCleanseEstimator
from neuralcleanse.frontends.art.parameters import Defence, Parameter, PyTorchParameters
from neuralcleanse.frontends.art.probes import (
    check_nb_classes,
    probe_outputs,
    warn_if_use_logits_contradicted,
)


class PyTorchNeuralCleanse(NeuralCleanseEstimator[PyTorchParameters]):
    """Neural Cleanse for PyTorch models (``torch.nn.Module``), with the same API.

    Every argument is also an attribute of the estimator (``model``, ``input_shape``,
    ``nb_classes``, ``clip_values`` and ``channels_first`` are ART's read-only properties, and
    ``loss`` is ART's method: read the loss argument from :meth:`get_params`); assigning one is
    :meth:`set_params`.

    Args:
        model: The PyTorch model.
        input_shape: Shape of one raw input, e.g. ``(1, 28, 28)``.
        nb_classes: Number of outputs (found with one forward pass when omitted; a number the
            model's outputs contradict is refused).
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
        steps: See :class:`~neuralcleanse.frontends.art.keras.KerasNeuralCleanse` for this and
            the other search parameters.
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

    Raises:
        InputError: On an invalid argument, naming it.
    """

    def __init__(self, model: Any, input_shape: tuple[int, ...], nb_classes: int | None = None,
                 loss: Any = None, optimizer: Any = None, use_logits: bool | None = None,
                 channels_first: bool = True, clip_values: Any = None,
                 preprocessing_defences: Defence | list[Defence] | None = None,
                 postprocessing_defences: Defence | list[Defence] | None = None,
                 preprocessing: Any = (0, 1), device: Any = None, steps: int = 1000,
                 init_cost: float = 0.001, norm: int | float = 2, learning_rate: float = 0.1,
                 attack_success_threshold: float = 0.99, patience: int = 5,
                 early_stop: bool = True, early_stop_threshold: float = 0.99,
                 early_stop_patience: int = 10, cost_multiplier: float = 1.5,
                 batch_size: int = 32) -> None:
        super().__init__(PyTorchParameters(
            model=model, input_shape=input_shape, nb_classes=nb_classes, loss=loss,
            optimizer=optimizer, use_logits=use_logits, channels_first=channels_first,
            clip_values=clip_values, preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences, preprocessing=preprocessing,
            device=device, steps=steps, init_cost=init_cost, norm=norm,
            learning_rate=learning_rate, attack_success_threshold=attack_success_threshold,
            patience=patience, early_stop=early_stop, early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience, cost_multiplier=cost_multiplier,
            batch_size=batch_size))

    optimizer = Parameter[Any]()
    device = Parameter[Any]()

    def _make_backend(self, parameters: PyTorchParameters) -> DifferentiableClassifier:
        from neuralcleanse.backends.torch.differentiable import TorchDifferentiableClassifier

        use_logits = parameters.use_logits
        clf = TorchDifferentiableClassifier(
            parameters.model, parameters.input_shape, loss=parameters.loss,
            optimizer=parameters.optimizer,
            output="probabilities" if use_logits is False else "logits",
            channels_first=parameters.channels_first,
            clip_values=parameters.clip_values or (0.0, 1.0),
            preprocessing=parameters.preprocessing, device=parameters.device,
            nb_classes=parameters.nb_classes)
        outputs = probe_outputs(clf)
        if parameters.nb_classes is not None:
            check_nb_classes(outputs, parameters.nb_classes)
        if use_logits is None:
            if rows_are_probabilities(outputs):
                clf.output = "probabilities"
        else:
            warn_if_use_logits_contradicted(outputs, use_logits)
        return clf
