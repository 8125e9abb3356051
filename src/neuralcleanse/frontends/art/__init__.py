"""ART-compatible Neural Cleanse estimators: ``KerasNeuralCleanse`` and ``PyTorchNeuralCleanse``.

They offer the API of ``art.estimators.poison_mitigation.neural_cleanse.KerasNeuralCleanse``
(the constructor arguments, defaults, methods and properties) on top of this package's trigger
search, outlier test and mitigations, without ART's known defects. Their parameters are their
constructor's arguments, typed and checked (scikit-learn's ``get_params``/``set_params``).

Like ART's, these classes act on the model they wrap: ``fit``, ``mitigate(["pruning"])`` and
``mitigate(["unlearning"])`` change its weights. Use :func:`neuralcleanse.mitigate` to repair a
copy instead.

Modules: :mod:`~.parameters` (the typed parameters), :mod:`~.base` (parameters and
backend), :mod:`~.classifier` (the ART classifier surface), :mod:`~.estimator` (detection and
mitigation), :mod:`~.keras` and :mod:`~.pytorch` (the two estimators), and the helpers
:mod:`~.inputs`, :mod:`~.defences`, :mod:`~.generators` and :mod:`~.probes`. Nothing here
imports a framework until an estimator builds its backend.
"""

from __future__ import annotations

from neuralcleanse.frontends.art.base import ConfiguredEstimator
from neuralcleanse.frontends.art.classifier import DATA_PATH_ENV, ArtClassifier, default_data_path
from neuralcleanse.frontends.art.estimator import MITIGATION_TYPES, NeuralCleanseEstimator
from neuralcleanse.frontends.art.keras import KerasNeuralCleanse
from neuralcleanse.frontends.art.parameters import (
    SEARCH_PARAMETERS,
    EstimatorParameters,
    KerasParameters,
    PyTorchParameters,
)
from neuralcleanse.frontends.art.pytorch import PyTorchNeuralCleanse

__all__ = ["DATA_PATH_ENV", "MITIGATION_TYPES", "SEARCH_PARAMETERS", "ArtClassifier",
           "ConfiguredEstimator", "EstimatorParameters", "KerasNeuralCleanse", "KerasParameters",
           "NeuralCleanseEstimator", "PyTorchNeuralCleanse", "PyTorchParameters",
           "default_data_path"]
