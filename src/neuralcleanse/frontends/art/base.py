"""The parameters of an estimator and the backend they shape.

:class:`ConfiguredEstimator` keeps an estimator's checked parameters
(:class:`~neuralcleanse.frontends.art.parameters.EstimatorParameters`) and the backend built from
them. Its parameters are its subclass's constructor arguments (scikit-learn's convention):
:meth:`~ConfiguredEstimator.get_params` reads their names from the constructor's signature and
:meth:`~ConfiguredEstimator.set_params` checks and sets them, building a new backend only when a
parameter that shapes it changes. Each parameter is also an attribute of the estimator.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Generic, TypeVar

from neuralcleanse.backends.differentiable import DifferentiableClassifier
from neuralcleanse.core.errors import InputError
from neuralcleanse.frontends.art.parameters import Defence, EstimatorParameters, Parameter

P = TypeVar("P", bound=EstimatorParameters)


class ConfiguredEstimator(abc.ABC, Generic[P]):
    """Checked parameters and the backend they shape; subclasses say how it is built.

    Args:
        parameters: The checked constructor arguments of the subclass.
    """

    def __init__(self, parameters: P) -> None:
        self._parameters = parameters
        self._clf = self._make_backend(parameters)

    @abc.abstractmethod
    def _make_backend(self, parameters: P) -> DifferentiableClassifier:
        """A new backend wrapping ``parameters.model`` as the parameters say."""

    # -- parameters ----------------------------------------------------------------------------
    @classmethod
    def _parameter_names(cls) -> list[str]:
        """The constructor's argument names, in order."""
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    @property
    def parameters(self) -> P:
        """The checked parameters (a frozen dataclass); change them with :meth:`set_params`."""
        return self._parameters

    def get_params(self) -> dict[str, Any]:
        """Get all parameters and their values of this estimator.

        Returns:
            The constructor's arguments by name, as checked (``clip_values`` as a float pair,
            defences as a list, search settings as stored by
            :class:`~neuralcleanse.core.config.ScanConfig`).
        """
        return {name: getattr(self._parameters, name) for name in self._parameter_names()}

    def set_params(self, **kwargs: Any) -> None:
        """Check and set parameters; nothing changes when one of them is invalid.

        A parameter that shapes the model wrapper (the model, its input and output conventions,
        ``clip_values``, ...) gives a new wrapper of the same model, which takes over the state
        the old one kept outside the model (pruning, optimiser).

        Args:
            **kwargs: Constructor arguments and their new values.

        Raises:
            InputError: On an unknown parameter or an invalid value (naming the parameter).
        """
        names = self._parameter_names()
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)} for "
                             f"{type(self).__name__}; valid parameters are {', '.join(names)}")
        if not kwargs:
            return
        parameters = self._parameters.replace(kwargs)
        clf = self._clf
        if parameters.needs_new_backend(kwargs):
            clf = self._make_backend(parameters)
            clf.adopt_state(self._clf)
        self._parameters, self._clf = parameters, clf

    use_logits = Parameter[bool | None]()
    preprocessing = Parameter[Any]()
    preprocessing_defences = Parameter[list[Defence] | None]()
    postprocessing_defences = Parameter[list[Defence] | None]()
    steps = Parameter[int]()
    init_cost = Parameter[float]()
    norm = Parameter[float]()
    learning_rate = Parameter[float]()
    attack_success_threshold = Parameter[float]()
    patience = Parameter[int]()
    early_stop = Parameter[bool]()
    early_stop_threshold = Parameter[float]()
    early_stop_patience = Parameter[int]()
    cost_multiplier = Parameter[float]()
    batch_size = Parameter[int]()

    # -- properties ----------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The wrapped framework model."""
        return self._parameters.model

    @property
    def classifier(self) -> DifferentiableClassifier:
        """The backend wrapper of the model (this package's interface)."""
        return self._clf

    @property
    def clip_values(self) -> tuple[float, float] | None:
        """The clip values ``(min, max)`` of the input samples, or ``None`` when not given.

        Without clip values the trigger search uses [0, 1] or [0, 255], whichever the
        validation data fits.
        """
        return self._parameters.clip_values
