"""Unlearning: fine-tune on clean data in which some images carry a reversed trigger.

A seeded ``stamped_fraction`` of the fitting images is stamped with the flagged labels' reversed
triggers (only on images of other classes) and keeps its true labels, so the model learns to
ignore the trigger. The budget counts optimiser updates as well as epochs: users often have a
few hundred clean images, on which five epochs are a few dozen updates, too few to unlearn a
backdoor; so at least ``min_updates`` updates run (more epochs on a small set). The training
runs in the framework's own loop (:meth:`Classifier.fine_tune`), with training-mode layers, and
leaves the model in inference mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.mitigation.inputs import check_fraction, check_int, check_positive, fit_and_test
from neuralcleanse.mitigation.metrics import DEFAULT_TEST_FRACTION, DataSplit, HeldOut, Measurements
from neuralcleanse.mitigation.stamping import check_triggers, stamp_fraction

#: Bounds of the fine-tuning settings: beyond them a value is a typo, not a choice.
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 10.0
MAX_MIN_UPDATES = 1_000_000
#: Defaults chosen on the tune half of the model zoo (``benchmarks/zoo_mitigation.py``, see
#: docs/zoo.md): on ~360 clean images the former 5 epochs at 1e-4 (60 updates) left a median
#: 40 % real-trigger success; 400 updates at 3e-3 met "< 5 % success within 3 points of clean
#: accuracy" on 85 % of the tune models (learning rates 1e-4 to 3e-3, 60 to 800 updates and
#: stamped fractions 0.1 to 0.5 were tried).
DEFAULT_EPOCHS = 5
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_STAMPED_FRACTION = 0.2
DEFAULT_BATCH_SIZE = 32
DEFAULT_MIN_UPDATES = 400


@dataclass
class UnlearningReport:
    """What :func:`unlearn` did and measured.

    Attributes:
        epochs: Passes over the fitting data actually run (``epochs`` as asked, or more when
            ``min_updates`` needed more; the asked value is in ``options["epochs_requested"]``).
        learning_rate: Learning rate of the fine-tuning.
        stamped_fraction: Share of the fitting images stamped with a reversed trigger.
        n_train: Images in the fine-tuning set.
        n_stamped: How many of them carry a trigger.
        measurements: Clean accuracy and reversed-trigger attack success before and after, on
            the held-out data.
        split: How the data was divided between fitting and measuring.
        options: The other settings (batch size, seed, asked epochs, ``min_updates``).
        updates: Optimiser updates run (mini-batches over all epochs).
    """

    epochs: int
    learning_rate: float
    stamped_fraction: float
    n_train: int
    n_stamped: int
    measurements: Measurements
    split: DataSplit
    options: dict[str, Any] = field(default_factory=dict)
    updates: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"epochs": int(self.epochs),
                "updates": None if self.updates is None else int(self.updates),
                "learning_rate": float(self.learning_rate),
                "stamped_fraction": float(self.stamped_fraction), "n_train": int(self.n_train),
                "n_stamped": int(self.n_stamped), "measurements": self.measurements.to_dict(),
                "split": self.split.to_dict(), "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlearningReport:
        """Inverse of :meth:`to_dict`."""
        return cls(epochs=int(data["epochs"]), learning_rate=float(data["learning_rate"]),
                   stamped_fraction=float(data["stamped_fraction"]),
                   n_train=int(data["n_train"]), n_stamped=int(data["n_stamped"]),
                   measurements=Measurements.from_dict(data["measurements"]),
                   split=DataSplit.from_dict(data["split"]), options=data.get("options", {}),
                   updates=None if data.get("updates") is None else int(data["updates"]))


def unlearn(clf: Classifier, x: np.ndarray, y: np.ndarray, triggers: Sequence[LabelResult], *,
            epochs: int = DEFAULT_EPOCHS, learning_rate: float = DEFAULT_LEARNING_RATE,
            stamped_fraction: float = DEFAULT_STAMPED_FRACTION,
            batch_size: int = DEFAULT_BATCH_SIZE, min_updates: int = DEFAULT_MIN_UPDATES,
            x_test: np.ndarray | None = None,
            y_test: np.ndarray | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
            seed: int = 0) -> UnlearningReport:
    """Fine-tune the model in place so that the reversed triggers lose their effect.

    Args:
        clf: The wrapped model; its weights are trained in place.
        x: Clean raw images in the model's layout (or ``(N, H, W)`` for one channel).
        y: Their labels (integers or one-hot).
        triggers: Reversed triggers of the flagged labels.
        epochs: Passes over the fitting data (>= 1); more run when ``min_updates`` asks it.
        learning_rate: Learning rate of the framework's optimiser (> 0).
        stamped_fraction: Share of the fitting images stamped with a reversed trigger, keeping
            their true labels, in (0, 1].
        batch_size: Mini-batch size of the fine-tuning (>= 1).
        min_updates: Fewest optimiser updates (mini-batches) to run (>= 0): the epochs are
            raised to ``ceil(min_updates / batches per epoch)`` when ``epochs`` gives fewer,
            so that a small clean set still gets a useful fine-tuning.
        x_test: Held-out clean images for the measurements (default: split off ``x``).
        y_test: Their labels.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split, of the choice of stamped images and of the batch order.

    Returns:
        The :class:`UnlearningReport`.

    Raises:
        ValueError: On a bad option, malformed data or mismatched triggers.
    """
    epochs = check_int("epochs", epochs, 1, MAX_EPOCHS)
    learning_rate = check_positive("learning_rate", learning_rate, MAX_LEARNING_RATE)
    stamped_fraction = check_fraction("stamped_fraction", stamped_fraction)
    batch_size = check_int("batch_size", batch_size, 1)
    min_updates = check_int("min_updates", min_updates, 0, MAX_MIN_UPDATES)
    triggers = check_triggers(clf, triggers)
    x_fit, y_fit, x_hold, y_hold, split = fit_and_test(clf, x, y, x_test, y_test,
                                                       test_fraction, seed)
    held = HeldOut(x_hold, y_hold, triggers, clf.channels_first)
    before = held.measure(clf)
    x_train, y_train, n_stamped = stamp_fraction(x_fit, y_fit, triggers, stamped_fraction,
                                                 clf.channels_first, seed)
    if n_stamped == 0:
        raise InputError(f"stamped_fraction={stamped_fraction} of {len(x_fit)} fitting images "
                         "stamps none: give more images or a larger stamped_fraction")
    per_epoch = math.ceil(len(x_train) / batch_size)
    epochs_run = max(epochs, math.ceil(min_updates / per_epoch))
    clf.fine_tune(x_train, y_train, epochs=epochs_run, learning_rate=learning_rate,
                  batch_size=batch_size, seed=seed)
    after = held.measure(clf)
    return UnlearningReport(
        epochs=epochs_run, learning_rate=learning_rate, stamped_fraction=stamped_fraction,
        n_train=len(x_train), n_stamped=n_stamped,
        measurements=Measurements.between(before, after, len(x_hold)),
        split=split, updates=epochs_run * per_epoch,
        options={"batch_size": batch_size, "seed": seed, "epochs_requested": epochs,
                 "min_updates": min_updates})
