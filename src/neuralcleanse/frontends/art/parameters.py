"""The parameters of the ART-compatible estimators: the constructor's arguments, typed and checked.

An estimator's parameters are exactly its constructor's arguments, with ART's names and
defaults. They are held in one frozen dataclass per framework (:class:`KerasParameters`,
:class:`PyTorchParameters`) that checks every value when it is built: a bad value fails in the
constructor or in ``set_params``, naming the parameter, and a failed ``set_params`` changes
nothing. The search settings among them are checked by building the
:class:`~neuralcleanse.core.config.ScanConfig` of the search (``ScanConfig.art_defaults``), so
they follow the same ranges as everywhere else in the library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

import numpy as np

from neuralcleanse.core.checks import check_clip_values
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError

if TYPE_CHECKING:
    from neuralcleanse.frontends.art.base import ConfiguredEstimator

#: The Neural Cleanse search parameters, in the order of ART's signature.
SEARCH_PARAMETERS = ("steps", "init_cost", "norm", "learning_rate", "attack_success_threshold",
                     "patience", "early_stop", "early_stop_threshold", "early_stop_patience",
                     "cost_multiplier", "batch_size")

#: Parameters that act outside the wrapped model: changing them needs no new backend.
DEFENCE_PARAMETERS = ("preprocessing_defences", "postprocessing_defences")

#: A preprocessing defence ``defence(x, y) -> (x, y)`` or a postprocessing one ``post(preds)``.
Defence = Callable[..., Any]


def python_scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def check_flag(name: str, value: Any, allow_none: bool = False) -> bool | None:
    """``value`` as a bool (numpy bools accepted), or ``None`` where that is allowed.

    Raises:
        InputError: On any other value, naming the parameter.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise InputError(f"{name} must be {allowed} (got {value!r})")
    return bool(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (numpy integers accepted).

    Raises:
        InputError: On anything else, naming the parameter.
    """
    value = python_scalar(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1 (got {value!r})")
    return value


def defence_list(name: str, value: Any) -> list[Defence] | None:
    """ART's form of a defences parameter: ``None``, or a list of callables.

    Raises:
        InputTypeError: If an item is not callable.
    """
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not callable(item):
            raise InputTypeError(f"{name} must be callables (or a list of them); got "
                                 f"{type(item).__name__}")
    return items


def check_input_shape(value: Any) -> tuple[int, ...]:
    """The shape of one input as a tuple of ints.

    Raises:
        InputError: If ``value`` is not a sequence of integers.
    """
    try:
        return tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a tuple of ints (got {value!r})") from None


_Params = TypeVar("_Params", bound="EstimatorParameters")


@dataclass(frozen=True, kw_only=True, eq=False)
class EstimatorParameters:
    """The parameters both estimators take (their meaning: ``KerasNeuralCleanse``).

    Built from the constructor's arguments; every value is checked and kept in its checked form
    (``clip_values`` as a float pair, defences as a list, the search settings as
    :class:`~neuralcleanse.core.config.ScanConfig` stores them).

    Raises:
        InputError: On any bad value, naming the parameter (an ``InputTypeError`` for a
            defence that is not callable).
    """

    #: Whether ``use_logits=None`` (tell from the model's outputs) is accepted.
    USE_LOGITS_MAY_BE_NONE: ClassVar[bool] = False

    model: Any
    use_logits: bool | None
    channels_first: bool
    clip_values: tuple[float, float] | None
    preprocessing_defences: list[Defence] | None
    postprocessing_defences: list[Defence] | None
    preprocessing: Any
    steps: int
    init_cost: float
    norm: int | float
    learning_rate: float
    attack_success_threshold: float
    patience: int
    early_stop: bool
    early_stop_threshold: float
    early_stop_patience: int
    cost_multiplier: float
    batch_size: int
    #: The settings of the trigger search, built from the search parameters above.
    search: ScanConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        search = ScanConfig.art_defaults(
            **{name: python_scalar(getattr(self, name)) for name in SEARCH_PARAMETERS},
            progress=False)
        self._store("search", search)
        for name in SEARCH_PARAMETERS:
            self._store(name, getattr(search, name))
        if self.clip_values is not None:
            self._store("clip_values", check_clip_values(self.clip_values))
        for name in DEFENCE_PARAMETERS:
            self._store(name, defence_list(name, getattr(self, name)))
        self._store("channels_first", check_flag("channels_first", self.channels_first))
        self._store("use_logits", check_flag("use_logits", self.use_logits,
                                             allow_none=self.USE_LOGITS_MAY_BE_NONE))

    def _store(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> list[str]:
        """The parameter names (the constructor's arguments)."""
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def replace(self: _Params, changes: Mapping[str, Any]) -> _Params:
        """A copy with some parameters changed, checked again.

        Raises:
            InputError: On an unknown name or a bad value; ``self`` is unchanged.
        """
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)}; valid parameters are "
                             f"{', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def needs_new_backend(changed: Mapping[str, Any]) -> bool:
        """Whether changing these parameters needs a new wrapper of the model."""
        return any(name not in SEARCH_PARAMETERS and name not in DEFENCE_PARAMETERS
                   for name in changed)


@dataclass(frozen=True, kw_only=True, eq=False)
class KerasParameters(EstimatorParameters):
    """The parameters of :class:`~neuralcleanse.frontends.art.keras.KerasNeuralCleanse`."""

    use_logits: bool
    input_layer: int
    output_layer: int


@dataclass(frozen=True, kw_only=True, eq=False)
class PyTorchParameters(EstimatorParameters):
    """The parameters of :class:`~neuralcleanse.frontends.art.pytorch.PyTorchNeuralCleanse`."""

    USE_LOGITS_MAY_BE_NONE: ClassVar[bool] = True

    input_shape: tuple[int, ...]
    nb_classes: int | None
    loss: Any
    optimizer: Any
    device: Any

    def __post_init__(self) -> None:
        super().__post_init__()
        self._store("input_shape", check_input_shape(self.input_shape))
        if self.nb_classes is not None:
            self._store("nb_classes", check_positive_int("nb_classes", self.nb_classes))


T = TypeVar("T")


class Parameter(Generic[T]):
    """A constructor parameter seen as an attribute of the estimator.

    Reading gives the parameter's checked value; assigning is :meth:`set_params` with that one
    parameter (checked, and a new model wrapper where the parameter needs one).
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Parameter[T]: ...

    @overload
    def __get__(self, obj: ConfiguredEstimator[Any], objtype: type | None = None) -> T: ...

    def __get__(self, obj: ConfiguredEstimator[Any] | None, objtype: type | None = None
                ) -> T | Parameter[T]:
        if obj is None:
            return self
        return getattr(obj.parameters, self.name)

    def __set__(self, obj: ConfiguredEstimator[Any], value: T) -> None:
        obj.set_params(**{self.name: value})
