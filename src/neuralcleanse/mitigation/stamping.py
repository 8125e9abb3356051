"""Stamping reversed triggers on clean images, and checking triggers against a model.

Every mitigation uses the same construction: a flagged label's reversed trigger stamped on clean
images of the *other* classes, which keep their true labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.core.layout import mask_for_layout
from neuralcleanse.core.results import LabelResult


def stamp(x: np.ndarray, mask: np.ndarray, pattern: np.ndarray,
          channels_first: bool) -> np.ndarray:
    """Stamp a trigger on a batch of images: ``(1 - mask) * x + mask * pattern``.

    Args:
        x: Raw images ``(N, *input_shape)``.
        mask: Mask in [0, 1] of shape ``(H, W)``.
        pattern: Pattern of the input shape, in the raw input range.
        channels_first: Layout of ``x``.

    Returns:
        The stamped images as float32 (a new array).
    """
    m = mask_for_layout(np.asarray(mask, np.float32), tuple(x.shape[1:]), channels_first)
    p = np.asarray(pattern, np.float32)
    return ((1.0 - m) * np.asarray(x, np.float32) + m * p).astype(np.float32)


def check_triggers(clf: Classifier, triggers: Sequence[LabelResult]) -> list[LabelResult]:
    """Validate the triggers to mitigate against the wrapped model.

    Raises:
        ValueError: If there is no trigger, a label is out of range or repeated, or a mask or
            pattern does not match the model's input shape.
        TypeError: If an element is not a :class:`~neuralcleanse.core.results.LabelResult`.
    """
    if isinstance(triggers, LabelResult):
        triggers = [triggers]
    triggers = list(triggers)
    if not triggers:
        raise InputError("triggers is empty: give the LabelResult of at least one flagged label "
                         "(there is nothing to mitigate)")
    seen: set[int] = set()
    for trig in triggers:
        check_trigger(clf, trig, "triggers")
        if trig.label in seen:
            raise InputError(f"trigger label {trig.label} is given twice")
        seen.add(trig.label)
    return triggers


def check_further_triggers(clf: Classifier, further: Sequence[LabelResult],
                           labels: Sequence[int]) -> list[LabelResult]:
    """Validate further triggers of labels being mitigated (several per label are allowed).

    Raises:
        ValueError: If a trigger is of a label not in ``labels`` or does not fit the model.
        TypeError: If ``further`` or an element has the wrong type.
    """
    if isinstance(further, LabelResult) or not isinstance(further, (list, tuple)):
        raise InputTypeError("further_triggers must be a list of LabelResult (got "
                             f"{type(further).__name__})")
    for trig in further:
        check_trigger(clf, trig, "further_triggers")
        if trig.label not in labels:
            raise InputError(f"a further trigger is of label {trig.label}, which is not being "
                             f"mitigated (labels: {sorted(labels)})")
    return list(further)


def check_trigger(clf: Classifier, trig: LabelResult, what: str) -> None:
    """Check one trigger's type, label, shapes and values against the wrapped model."""
    if not isinstance(trig, LabelResult):
        raise InputTypeError(f"{what} must be LabelResult objects (got "
                             f"{type(trig).__name__})")
    if not 0 <= trig.label < clf.nb_classes:
        raise InputError(f"trigger label {trig.label} is outside 0..{clf.nb_classes - 1}")
    if tuple(np.shape(trig.mask)) != tuple(clf.image_shape):
        raise InputError(f"the trigger mask of label {trig.label} has shape "
                         f"{np.shape(trig.mask)} but the model's images are "
                         f"{tuple(clf.image_shape)}")
    if tuple(np.shape(trig.pattern)) != tuple(clf.input_shape):
        raise InputError(f"the trigger pattern of label {trig.label} has shape "
                         f"{np.shape(trig.pattern)} but the model's inputs are "
                         f"{tuple(clf.input_shape)}")
    if not (np.all(np.isfinite(trig.mask)) and np.all(np.isfinite(trig.pattern))):
        raise InputError(f"the trigger of label {trig.label} holds NaN or infinite values "
                         "(its search did not finish with a usable trigger)")


def stamped_others(x: np.ndarray, y: np.ndarray, trigger: LabelResult,
                   channels_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stamp ``trigger`` on every image whose true label is not the trigger's label.

    Returns:
        ``(stamped images, their true labels)``; empty when every image has the target label.
    """
    others = np.flatnonzero(y != trigger.label)
    return stamp(x[others], trigger.mask, trigger.pattern, channels_first), y[others]


def stamp_fraction(x: np.ndarray, y: np.ndarray, triggers: Sequence[LabelResult],
                   fraction: float, channels_first: bool, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Stamp a seeded share of the images with the triggers, keeping all true labels.

    The chosen images are split evenly among the triggers (round robin in a seeded order); an
    image is only stamped with the trigger of a label other than its own.

    Args:
        x: Raw images ``(N, *input_shape)``.
        y: Their true labels.
        triggers: The flagged labels' reversed triggers.
        fraction: Share of all ``N`` images to stamp, in [0, 1].
        channels_first: Layout of ``x``.
        seed: Seed of the choice of images.

    Returns:
        ``(images with some stamped, the unchanged labels, number of stamped images)``.
    """
    rng = np.random.default_rng([int(seed), 4231])
    out = np.array(x, dtype=np.float32, copy=True)
    wanted = int(round(fraction * len(x)))
    order = rng.permutation(len(x))
    taken = np.zeros(len(x), dtype=bool)
    per_trigger: list[list[int]] = [[] for _ in triggers]
    k = 0
    for idx in order:
        if k >= wanted:
            break
        # Offer the image to the triggers in turn, starting with the one whose turn it is.
        for j in range(len(triggers)):
            t = (k + j) % len(triggers)
            if y[idx] != triggers[t].label:
                per_trigger[t].append(int(idx))
                taken[idx] = True
                k += 1
                break
    for trig, chosen in zip(triggers, per_trigger):
        if chosen:
            out[chosen] = stamp(out[chosen], trig.mask, trig.pattern, channels_first)
    return out, np.asarray(y).copy(), int(taken.sum())
