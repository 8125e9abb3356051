"""Neuron pruning: silence the neurons the reversed triggers excite most.

The neurons of one layer are ranked once by their activation gap, the mean activation on clean
images stamped with the flagged labels' reversed triggers minus the mean on the same clean
images; they are pruned in that order, a few at a time, until the reversed triggers' attack
success rate on the fitting data falls to ``target_asr`` or ``max_fraction`` of the layer is
pruned. Pruning goes through :meth:`Classifier.set_pruned_neurons`: the weights are untouched
until the model is saved, and ``clf.set_pruned_neurons(report.layer, [])`` undoes it.
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
from neuralcleanse.mitigation.inputs import check_fraction, check_int, fit_and_test
from neuralcleanse.mitigation.metrics import (
    DEFAULT_TEST_FRACTION,
    DataSplit,
    HeldOut,
    Measurements,
    finite_or_none,
    none_to_nan,
    rates_from_dict,
    rates_to_dict,
)
from neuralcleanse.mitigation.stamping import check_triggers

DEFAULT_MAX_FRACTION = 0.3
DEFAULT_TARGET_ASR = 0.05
DEFAULT_STEP_FRACTION = 0.01


@dataclass
class PruningPoint:
    """The state after one pruning step.

    Attributes:
        n_pruned: Neurons pruned so far.
        fraction: ``n_pruned`` over the layer's neurons.
        fit_asr: Largest reversed-trigger attack success rate on the fitting data (decides the
            stop).
        fit_clean_acc: Clean accuracy on the fitting data.
        test_asr: Reversed-trigger attack success rate per label on the held-out data.
        test_clean_acc: Clean accuracy on the held-out data.
        test_label_acc: Accuracy on the held-out images of each flagged label: when it falls
            with the attack success rate, the pruned neurons also carried the label itself.
    """

    n_pruned: int
    fraction: float
    fit_asr: float
    fit_clean_acc: float
    test_asr: dict[int, float]
    test_clean_acc: float
    test_label_acc: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"n_pruned": int(self.n_pruned), "fraction": float(self.fraction),
                "fit_asr": finite_or_none(self.fit_asr),
                "fit_clean_acc": finite_or_none(self.fit_clean_acc),
                "test_asr": rates_to_dict(self.test_asr),
                "test_clean_acc": finite_or_none(self.test_clean_acc),
                "test_label_acc": rates_to_dict(self.test_label_acc)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPoint:
        """Inverse of :meth:`to_dict`."""
        return cls(n_pruned=int(data["n_pruned"]), fraction=float(data["fraction"]),
                   fit_asr=none_to_nan(data["fit_asr"]),
                   fit_clean_acc=none_to_nan(data["fit_clean_acc"]),
                   test_asr=rates_from_dict(data["test_asr"]),
                   test_clean_acc=none_to_nan(data["test_clean_acc"]),
                   test_label_acc=rates_from_dict(data.get("test_label_acc") or {}))


@dataclass
class PruningReport:
    """What :func:`prune` did and measured.

    Attributes:
        layer: The pruned layer's spec (``"final_layer_input"`` by default).
        n_neurons: Neurons in that layer.
        pruned_neurons: The pruned neurons, in pruning order.
        fraction: Share of the layer pruned.
        target_asr: The attack success rate the pruning aimed for.
        max_fraction: The most it was allowed to prune.
        reached_target: Whether the fitting-data attack success rate reached ``target_asr``.
        curve: One point per pruning step, the unpruned model first.
        measurements: Clean accuracy and reversed-trigger attack success before and after, on
            the held-out data.
        split: How the data was divided between fitting and measuring.
    """

    layer: str | int
    n_neurons: int
    pruned_neurons: list[int]
    fraction: float
    target_asr: float
    max_fraction: float
    reached_target: bool
    curve: list[PruningPoint]
    measurements: Measurements
    split: DataSplit
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"layer": self.layer, "n_neurons": int(self.n_neurons),
                "pruned_neurons": [int(n) for n in self.pruned_neurons],
                "fraction": float(self.fraction), "target_asr": float(self.target_asr),
                "max_fraction": float(self.max_fraction),
                "reached_target": bool(self.reached_target),
                "curve": [p.to_dict() for p in self.curve],
                "measurements": self.measurements.to_dict(), "split": self.split.to_dict(),
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        """Inverse of :meth:`to_dict`."""
        return cls(layer=data["layer"], n_neurons=int(data["n_neurons"]),
                   pruned_neurons=[int(n) for n in data["pruned_neurons"]],
                   fraction=float(data["fraction"]), target_asr=float(data["target_asr"]),
                   max_fraction=float(data["max_fraction"]),
                   reached_target=bool(data["reached_target"]),
                   curve=[PruningPoint.from_dict(p) for p in data["curve"]],
                   measurements=Measurements.from_dict(data["measurements"]),
                   split=DataSplit.from_dict(data["split"]), options=data.get("options", {}))


def rank_by_activation_gap(clf: Classifier, x_clean: np.ndarray, x_stamped: np.ndarray,
                           layer: str | int | None = None, batch_size: int = 256) -> np.ndarray:
    """Order a layer's neurons by how much more a trigger excites them, largest gap first.

    The gap of a neuron is its mean activation on ``x_stamped`` minus its mean on ``x_clean``
    (convolutional channels averaged over space), measured with whatever pruning ``clf``
    currently has; ties keep the neurons' order.

    Args:
        clf: The wrapped model.
        x_clean: Clean raw images.
        x_stamped: Raw images carrying a trigger.
        layer: A name or index from ``clf.layer_names()``, or ``None`` for the input of the
            final classification layer.
        batch_size: Batch size of the forward passes.

    Returns:
        Neuron indices, ``(neurons,)``.
    """
    clean = clf.neuron_activations(x_clean, layer, batch_size=batch_size)
    stamped = clf.neuron_activations(x_stamped, layer, batch_size=batch_size)
    return np.argsort(-(stamped.mean(axis=0) - clean.mean(axis=0)), kind="stable")


def prune(clf: Classifier, x: np.ndarray, y: np.ndarray, triggers: Sequence[LabelResult], *,
          layer: str | int | None = None, max_fraction: float = DEFAULT_MAX_FRACTION,
          target_asr: float = DEFAULT_TARGET_ASR, step_fraction: float = DEFAULT_STEP_FRACTION,
          x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
          test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
          batch_size: int = 256) -> PruningReport:
    """Prune, in place and reversibly, the neurons that carry the reversed triggers.

    Any earlier pruning of the same layer is replaced.

    Args:
        clf: The wrapped model; pruned in place (undo with ``clf.set_pruned_neurons(layer,
            [])``; :meth:`Classifier.save` writes the pruning into the weights).
        x: Clean raw images in the model's layout (or ``(N, H, W)`` for one channel).
        y: Their labels (integers or one-hot).
        triggers: Reversed triggers of the flagged labels.
        layer: Layer to prune: a name or index from ``clf.layer_names()``, or ``None`` for the
            input of the final classification layer. Convolutional layers are pruned by channel.
        max_fraction: Largest share of the layer's neurons to prune, in (0, 1].
        target_asr: Stop once every reversed trigger's attack success rate on the fitting data
            is at most this, in [0, 1].
        step_fraction: Share of the layer's neurons pruned per step (at least one), in (0, 1].
        x_test: Held-out clean images for the measurements (default: split off ``x``).
        y_test: Their labels.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split.
        batch_size: Batch size of the forward passes.

    Returns:
        The :class:`PruningReport`.

    Raises:
        ValueError: On a bad option, malformed data, mismatched triggers or an unknown layer.
    """
    max_fraction = check_fraction("max_fraction", max_fraction)
    target_asr = check_fraction("target_asr", target_asr, allow_zero=True)
    step_fraction = check_fraction("step_fraction", step_fraction)
    batch_size = check_int("batch_size", batch_size, 1)
    triggers = check_triggers(clf, triggers)
    x_fit, y_fit, x_hold, y_hold, split = fit_and_test(clf, x, y, x_test, y_test,
                                                       test_fraction, seed)
    fit = HeldOut(x_fit, y_fit, triggers, clf.channels_first, batch_size)
    for label, xs in fit.stamped.items():
        if len(xs) == 0:
            raise InputError(f"x has no image of a class other than {label} to stamp its "
                             "trigger on")
    held = HeldOut(x_hold, y_hold, triggers, clf.channels_first, batch_size)

    clf.set_pruned_neurons(layer, np.zeros(0, dtype=np.int64))
    order = rank_by_activation_gap(clf, x_fit, np.concatenate(list(fit.stamped.values())),
                                   layer, batch_size)
    n_neurons = len(order)
    limit = int(math.floor(max_fraction * n_neurons + 1e-9))
    step = max(1, int(round(step_fraction * n_neurons)))

    def point(n: int) -> PruningPoint:
        on_fit, on_test = fit.measure(clf), held.measure(clf)
        return PruningPoint(n_pruned=n, fraction=n / n_neurons, fit_asr=max(on_fit.asr.values()),
                            fit_clean_acc=on_fit.clean_acc, test_asr=on_test.asr,
                            test_clean_acc=on_test.clean_acc, test_label_acc=on_test.label_acc)

    curve = [point(0)]
    n = 0
    while curve[-1].fit_asr > target_asr and n < limit:
        n = min(n + step, limit)
        clf.set_pruned_neurons(layer, order[:n])
        curve.append(point(n))
    first, last = curve[0], curve[-1]
    return PruningReport(
        layer=Classifier.FINAL_LAYER_INPUT if layer is None else layer, n_neurons=n_neurons,
        pruned_neurons=order[:n].tolist(), fraction=n / n_neurons, target_asr=target_asr,
        max_fraction=max_fraction, reached_target=bool(last.fit_asr <= target_asr),
        curve=curve,
        measurements=Measurements(first.test_clean_acc, last.test_clean_acc, first.test_asr,
                                  last.test_asr, len(x_hold), first.test_label_acc,
                                  last.test_label_acc),
        split=split, options={"max_fraction": max_fraction, "target_asr": target_asr,
                              "step_fraction": step_fraction})
