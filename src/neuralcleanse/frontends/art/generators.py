"""The batches of one training epoch from the generators ``fit_generator`` accepts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from neuralcleanse.core.errors import InputError, InputTypeError


def is_one_shot_iterator(obj: Any) -> bool:
    """Whether ``obj`` is a one-shot iterator (its ``iter()`` is itself)."""
    try:
        return iter(obj) is obj
    except TypeError:
        return False


def epoch_batches(generator: Any, steps: int | None) -> Iterator[Any]:
    """The batches of one epoch of ``generator``, at most ``steps`` of them when given.

    Accepted: ART ``DataGenerator`` objects (``get_batch()``, ``size``, ``batch_size``), Keras
    ``Sequence``/``PyDataset`` objects and other indexable sequences of batches (their
    ``on_epoch_end`` is called after the epoch), and iterables such as a PyTorch ``DataLoader``.

    Raises:
        InputError: If a one-shot iterator comes without ``steps``.
        InputTypeError: If ``generator`` is none of the above.
    """
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
        raise InputTypeError("generator must be an ART DataGenerator, a sequence of batches or "
                             f"an iterable of (x, y) batches (got {type(generator).__name__})")
    if steps is None and is_one_shot_iterator(generator):
        raise InputError("fit_generator needs steps_per_epoch for a one-shot iterator")
    for i, batch in enumerate(generator):
        if steps is not None and i >= steps:
            return
        yield batch


def reject_extra(kwargs: dict[str, Any], method: str, allowed: str) -> None:
    """Refuse keyword arguments a training method does not take.

    Raises:
        InputError: For ``epochs`` (the number of epochs is ``nb_epochs``).
        InputTypeError: For any other unexpected argument.
    """
    if "epochs" in kwargs:
        raise InputError(f"{method}(): give the number of epochs as nb_epochs, not in kwargs")
    if kwargs:
        raise InputTypeError(f"{method}() got unexpected argument(s) {', '.join(kwargs)}; it "
                             f"accepts {allowed}")
