"""``KerasNeuralCleanse``: ART's Keras Neural Cleanse estimator over this package's backend."""

from __future__ import annotations

from typing import Any

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.frontends.art.estimator import NeuralCleanseEstimator
from neuralcleanse.frontends.art.parameters import Defence, KerasParameters, Parameter
from neuralcleanse.frontends.art.probes import probe_outputs, warn_if_use_logits_contradicted


class KerasNeuralCleanse(NeuralCleanseEstimator[KerasParameters]):
    """Neural Cleanse for Keras models (Keras 3 on TensorFlow, or tf.keras / tf_keras).

    The signature and defaults are those of ART's ``KerasNeuralCleanse``. One optimisation
    step is one pass over ``x_val`` in mini-batches of ``batch_size``. Every argument is also
    an attribute of the estimator (``model``, ``clip_values`` and ``channels_first`` are ART's
    read-only properties); assigning one is :meth:`set_params`.

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

    Raises:
        InputError: On an invalid argument, naming it.
    """

    def __init__(self, model: Any, use_logits: bool = False, channels_first: bool = False,
                 clip_values: Any = None,
                 preprocessing_defences: Defence | list[Defence] | None = None,
                 postprocessing_defences: Defence | list[Defence] | None = None,
                 preprocessing: Any = (0, 1), input_layer: int = 0, output_layer: int = 0,
                 steps: int = 1000, init_cost: float = 0.001, norm: int | float = 2,
                 learning_rate: float = 0.1, attack_success_threshold: float = 0.99,
                 patience: int = 5, early_stop: bool = True, early_stop_threshold: float = 0.99,
                 early_stop_patience: int = 10, cost_multiplier: float = 1.5,
                 batch_size: int = 32) -> None:
        super().__init__(KerasParameters(
            model=model, use_logits=use_logits, channels_first=channels_first,
            clip_values=clip_values, preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences, preprocessing=preprocessing,
            input_layer=input_layer, output_layer=output_layer, steps=steps,
            init_cost=init_cost, norm=norm, learning_rate=learning_rate,
            attack_success_threshold=attack_success_threshold, patience=patience,
            early_stop=early_stop, early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience, cost_multiplier=cost_multiplier,
            batch_size=batch_size))

    input_layer = Parameter[int]()
    output_layer = Parameter[int]()

    def _make_backend(self, parameters: KerasParameters) -> DifferentiableClassifier:
        from neuralcleanse.backends.tensorflow.differentiable import (
            KerasDifferentiableClassifier,
        )

        clf = KerasDifferentiableClassifier(
            parameters.model, output="logits" if parameters.use_logits else "probabilities",
            channels_first=parameters.channels_first,
            clip_values=parameters.clip_values or (0.0, 1.0),
            preprocessing=parameters.preprocessing, input_layer=parameters.input_layer,
            output_layer=parameters.output_layer)
        warn_if_use_logits_contradicted(probe_outputs(clf), parameters.use_logits)
        return clf
