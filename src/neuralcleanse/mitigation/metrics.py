"""Held-out measurements shared by every mitigation: clean accuracy and attack success rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.mitigation.stamping import stamped_others

#: Default share of the user's data held out for the measurements when no test data is given.
DEFAULT_TEST_FRACTION = 0.2


class Predictor(Protocol):
    """Anything with a ``predict`` returning one row of scores per input."""

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scores ``(N, classes)``; a row of zeros means the input was refused."""


def predicted_labels(outputs: np.ndarray) -> np.ndarray:
    """Predicted class per row, or -1 for an all-zero row (an input the filter refused)."""
    out = np.asarray(outputs)
    labels = out.argmax(axis=1).astype(np.int64)
    labels[~np.any(out != 0, axis=1)] = -1
    return labels


def attack_success_rate(predictor: Predictor, x_stamped: np.ndarray, target: int,
                        batch_size: int = 256) -> float:
    """Share of triggered inputs (of other true classes) that ``predictor`` sends to ``target``.

    An input refused by a filter (a row of zeros) is not a success. NaN when ``x_stamped`` is
    empty.
    """
    if len(x_stamped) == 0:
        return math.nan
    pred = predicted_labels(predictor.predict(x_stamped, batch_size=batch_size))
    return float(np.mean(pred == target))


@dataclass
class DataSplit:
    """How the data was divided between fitting the mitigation and measuring it.

    Attributes:
        source: ``"given"`` when the caller passed test data, ``"split"`` when it was split off.
        n_fit: Images used to fit the mitigation.
        n_test: Held-out images the measurements use.
        test_fraction: Share held out (``None`` when the test data was given).
        seed: Seed of the split (``None`` when the test data was given).
    """

    source: str
    n_fit: int
    n_test: int
    test_fraction: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"source": self.source, "n_fit": int(self.n_fit), "n_test": int(self.n_test),
                "test_fraction": self.test_fraction, "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSplit:
        """Inverse of :meth:`to_dict`."""
        return cls(source=str(data["source"]), n_fit=int(data["n_fit"]),
                   n_test=int(data["n_test"]), test_fraction=data.get("test_fraction"),
                   seed=data.get("seed"))


def check_test_fraction(test_fraction: float) -> float:
    """Validate the held-out share, which must lie strictly between 0 and 1."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be a number strictly between 0 and 1 "
                         f"(got {test_fraction!r})")
    return float(test_fraction)


def split_holdout(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, DataSplit]:
    """Split ``x, y`` into fitting and held-out parts, stratified by class and seeded.

    Each class gives ``round(test_fraction * count)`` images to the held-out part.

    Returns:
        ``(x_fit, y_fit, x_test, y_test, split)``.

    Raises:
        ValueError: If either part would be empty.
    """
    test_fraction = check_test_fraction(test_fraction)
    rng = np.random.default_rng([int(seed), 1777])
    test_idx = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test_idx.append(members[:int(round(test_fraction * len(members)))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    if is_test.all() or not is_test.any():
        raise InputError(f"test_fraction={test_fraction} leaves no image for "
                         f"{'fitting' if is_test.all() else 'measuring'} ({len(y)} images): "
                         "give more images or x_test/y_test")
    split = DataSplit(source="split", n_fit=int((~is_test).sum()), n_test=int(is_test.sum()),
                      test_fraction=test_fraction, seed=int(seed))
    return x[~is_test], y[~is_test], x[is_test], y[is_test], split


@dataclass
class Snapshot:
    """What one model (or filtered predictor) scores on the held-out data.

    Attributes:
        clean_acc: Accuracy on all held-out clean images.
        asr: Reversed-trigger attack success rate per flagged label.
        label_acc: Accuracy on the held-out clean images whose true label is the flagged label
            (NaN when there is none): shows whether a mitigation removed the backdoor by
            removing the label's own recognition.
    """

    clean_acc: float
    asr: dict[int, float]
    label_acc: dict[int, float]


@dataclass
class Measurements:
    """Clean accuracy and reversed-trigger attack success rates before and after a mitigation.

    All figures are measured on held-out data. The attack success rate of a label is the share
    of held-out images of the other classes, stamped with that label's reversed trigger, that
    are classified as the label; an input refused by a filter counts as no success, and a
    refused clean input counts as an error.

    Attributes:
        clean_acc_before: Clean accuracy of the model before.
        clean_acc_after: Clean accuracy after (of the repaired model or the filtered predictor).
        reversed_asr_before: Attack success rate of each flagged label's reversed trigger before.
        reversed_asr_after: The same after.
        n_test: Number of held-out images.
        label_acc_before: Accuracy on the held-out images of each flagged label before.
        label_acc_after: The same after.
    """

    clean_acc_before: float
    clean_acc_after: float
    reversed_asr_before: dict[int, float]
    reversed_asr_after: dict[int, float]
    n_test: int
    label_acc_before: dict[int, float] = field(default_factory=dict)
    label_acc_after: dict[int, float] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, n_test: int) -> Measurements:
        """The measurements of a mitigation from the snapshots before and after it."""
        return cls(before.clean_acc, after.clean_acc, before.asr, after.asr, n_test,
                   before.label_acc, after.label_acc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values (label keys as strings, NaN as ``None``)."""
        return {"clean_acc_before": finite_or_none(self.clean_acc_before),
                "clean_acc_after": finite_or_none(self.clean_acc_after),
                "reversed_asr_before": rates_to_dict(self.reversed_asr_before),
                "reversed_asr_after": rates_to_dict(self.reversed_asr_after),
                "label_acc_before": rates_to_dict(self.label_acc_before),
                "label_acc_after": rates_to_dict(self.label_acc_after),
                "n_test": int(self.n_test)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurements:
        """Inverse of :meth:`to_dict` (the per-label accuracies may be absent)."""
        return cls(clean_acc_before=none_to_nan(data["clean_acc_before"]),
                   clean_acc_after=none_to_nan(data["clean_acc_after"]),
                   reversed_asr_before=rates_from_dict(data["reversed_asr_before"]),
                   reversed_asr_after=rates_from_dict(data["reversed_asr_after"]),
                   n_test=int(data["n_test"]),
                   label_acc_before=rates_from_dict(data.get("label_acc_before") or {}),
                   label_acc_after=rates_from_dict(data.get("label_acc_after") or {}))


class HeldOut:
    """Held-out clean images and, per flagged label, the same images of other classes stamped.

    Args:
        x: Held-out raw images in the model's layout.
        y: Their labels.
        triggers: The flagged labels' reversed triggers.
        channels_first: Layout of ``x``.
        batch_size: Batch size of the predictions.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, triggers: Sequence[LabelResult],
                 channels_first: bool, batch_size: int = 256) -> None:
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.stamped = {t.label: stamped_others(x, y, t, channels_first)[0] for t in triggers}

    def measure(self, predictor: Predictor) -> Snapshot:
        """Clean accuracy, reversed-trigger attack success and accuracy per flagged label."""
        labels = predicted_labels(predictor.predict(self.x, batch_size=self.batch_size)) \
            if len(self.x) else np.zeros(0, dtype=np.int64)
        correct = labels == self.y
        acc = float(np.mean(correct)) if len(self.x) else math.nan
        asr = {label: attack_success_rate(predictor, xs, label, self.batch_size)
               for label, xs in self.stamped.items()}
        own = {label: float(np.mean(correct[self.y == label])) if np.any(self.y == label)
               else math.nan for label in self.stamped}
        return Snapshot(acc, asr, own)


def rates_to_dict(rates: dict[int, float]) -> dict[str, float | None]:
    """Per-label rates as JSON: label keys as strings, NaN as ``None``."""
    return {str(k): finite_or_none(v) for k, v in rates.items()}


def rates_from_dict(rates: dict[str, float | None]) -> dict[int, float]:
    """Inverse of :func:`rates_to_dict`."""
    return {int(k): none_to_nan(v) for k, v in rates.items()}


def finite_or_none(value: float) -> float | None:
    """The value, or ``None`` when it is NaN or infinite (JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def none_to_nan(value: float | None) -> float:
    """Inverse of :func:`finite_or_none`."""
    return math.nan if value is None else float(value)
