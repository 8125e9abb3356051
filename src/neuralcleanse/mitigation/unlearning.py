"""Unlearning: fine-tune on clean data in which some images carry a reversed trigger.

A seeded ``stamped_fraction`` of the fitting images is stamped with the flagged labels' reversed
triggers (only on images of other classes) and keeps its true labels, so the model learns to
ignore the trigger. The budget counts optimiser updates as well as epochs: users often have a
few hundred clean images, on which five epochs are a few dozen updates, too few to unlearn a
backdoor; so at least ``min_updates`` updates run (more epochs on a small set). The training
runs in the framework's own loop (:meth:`Classifier.fine_tune`), with training-mode layers, and
leaves the model in inference mode.

With ``rounds`` > 1 the budget is split into rounds. Before each round after the first, the
flagged labels' smallest triggers are searched again on the partly repaired model (the scan's
search settings, on the fitting images), and that round stamps the new triggers beside the
scan's. A reversed trigger is often another way into the target than the real trigger (on the
model zoo's small ResNets its top pixels barely overlap the real patch), so unlearning it alone
can leave the real trigger working; the search on the partly repaired model finds what still
leads there, but it is usually a larger trigger, and stamping it costs clean accuracy.

For the same reason the triggers the scan's confirmation (or its restarts) found with other
seeds (``further_triggers``) are stamped beside the kept one when they are given: several ways into
the target, found at no extra cost, transfer to the real trigger more often than one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.config import MAX_SEED, ScanConfig
from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.mitigation.inputs import check_fraction, check_int, check_positive, fit_and_test
from neuralcleanse.mitigation.metrics import (
    DEFAULT_TEST_FRACTION,
    DataSplit,
    HeldOut,
    Measurements,
    attack_success_rate,
    rates_from_dict,
    rates_to_dict,
)
from neuralcleanse.mitigation.stamping import (
    check_further_triggers,
    check_triggers,
    stamp_fraction,
    stamped_others,
)
from neuralcleanse.search.reverse import reverse_engineer

#: Bounds of the fine-tuning settings: beyond them a value is a typo, not a choice.
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 10.0
MAX_MIN_UPDATES = 1_000_000
MAX_ROUNDS = 20
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
#: One round by default: on the model zoo two rounds (the same updates split in two, the trigger
#: searched again between them) removed the real trigger more often but cost clean accuracy
#: more often, and met the target on about as many models (``benchmarks/zoo_mitigation.py
#: --set unlearning.rounds=2``, docs/zoo.md).
DEFAULT_ROUNDS = 1
#: Stamp every trigger the scan found for a label (its other seeds' or restarts' too), not only
#: the kept one: on the model zoo this met the target on 37 instead of 35 of the first
#: population's 43 flagged patch models and 32 instead of 31 of the second's 36, at no search
#: cost (docs/zoo.md). :func:`neuralcleanse.mitigate`'s ``all_seeds`` option.
DEFAULT_ALL_SEEDS = True


@dataclass
class UnlearningRound:
    """One round of unlearning.

    Attributes:
        epochs: Passes over the fitting data in this round.
        updates: Optimiser updates in this round.
        norms: Per flagged label, the L1 norm of the trigger searched again before this round
            (empty for the first round, which stamps the scan's triggers only).
        success_found: Per label, that trigger's attack success on the fitting images when it
            was found.
        success_after: Per label, its attack success on the held-out images after the last
            round.
    """

    epochs: int
    updates: int
    norms: dict[int, float] = field(default_factory=dict)
    success_found: dict[int, float] = field(default_factory=dict)
    success_after: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"epochs": int(self.epochs), "updates": int(self.updates),
                "norms": rates_to_dict(self.norms),
                "success_found": rates_to_dict(self.success_found),
                "success_after": rates_to_dict(self.success_after)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlearningRound:
        """Inverse of :meth:`to_dict`."""
        return cls(epochs=int(data["epochs"]), updates=int(data["updates"]),
                   norms=rates_from_dict(data.get("norms", {})),
                   success_found=rates_from_dict(data.get("success_found", {})),
                   success_after=rates_from_dict(data.get("success_after", {})))


@dataclass
class UnlearningReport:
    """What :func:`unlearn` did and measured.

    Attributes:
        epochs: Passes over the fitting data actually run (``epochs`` as asked, or more when
            ``min_updates`` needed more; the asked value is in ``options["epochs_requested"]``).
        learning_rate: Learning rate of the fine-tuning.
        stamped_fraction: Share of the fitting images stamped with a reversed trigger.
        n_train: Images in the fine-tuning set.
        n_stamped: How many of them carry a trigger (with rounds: the most in one round).
        measurements: Clean accuracy and reversed-trigger attack success before and after, on
            the held-out data.
        split: How the data was divided between fitting and measuring.
        options: The other settings (batch size, seed, asked epochs, ``min_updates``,
            ``rounds``).
        updates: Optimiser updates run (mini-batches over all epochs and rounds).
        rounds: What each round did (one entry per round run).
        further_norms: Per label, the L1 norms of the further triggers stamped beside its
            kept one (the scan's other seeds; empty when there were none).
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
    rounds: list[UnlearningRound] = field(default_factory=list)
    further_norms: dict[int, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"epochs": int(self.epochs),
                "updates": None if self.updates is None else int(self.updates),
                "learning_rate": float(self.learning_rate),
                "stamped_fraction": float(self.stamped_fraction), "n_train": int(self.n_train),
                "n_stamped": int(self.n_stamped), "measurements": self.measurements.to_dict(),
                "split": self.split.to_dict(), "options": dict(self.options),
                "rounds": [r.to_dict() for r in self.rounds],
                "further_norms": {str(k): [float(n) for n in v]
                                  for k, v in self.further_norms.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlearningReport:
        """Inverse of :meth:`to_dict`."""
        return cls(epochs=int(data["epochs"]), learning_rate=float(data["learning_rate"]),
                   stamped_fraction=float(data["stamped_fraction"]),
                   n_train=int(data["n_train"]), n_stamped=int(data["n_stamped"]),
                   measurements=Measurements.from_dict(data["measurements"]),
                   split=DataSplit.from_dict(data["split"]), options=data.get("options", {}),
                   updates=None if data.get("updates") is None else int(data["updates"]),
                   rounds=[UnlearningRound.from_dict(r) for r in data.get("rounds", [])],
                   further_norms={int(k): [float(n) for n in v]
                                  for k, v in data.get("further_norms", {}).items()})


def unlearn(clf: Classifier, x: np.ndarray, y: np.ndarray, triggers: Sequence[LabelResult], *,
            epochs: int = DEFAULT_EPOCHS, learning_rate: float = DEFAULT_LEARNING_RATE,
            stamped_fraction: float = DEFAULT_STAMPED_FRACTION,
            batch_size: int = DEFAULT_BATCH_SIZE, min_updates: int = DEFAULT_MIN_UPDATES,
            rounds: int = DEFAULT_ROUNDS, search_config: ScanConfig | None = None,
            further_triggers: Sequence[LabelResult] = (),
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
        rounds: Rounds the epochs are split into, in [1, 20] (never more rounds than epochs);
            before each round after the first the flagged labels' triggers are searched again
            on the partly repaired model and stamped beside the given ones. 1 (the default):
            the given triggers only, in one run.
        search_config: Settings of that search (the scan's; default: :class:`ScanConfig`'s
            defaults). Its seed is replaced by ``seed`` and its progress bar switched off.
        further_triggers: More reversed triggers of the labels in ``triggers`` (any number
            per label), stamped beside them: :attr:`ScanResult.further_triggers`, the triggers
            the scan's confirmation (or restarts) found with other seeds. The stamped images
            are shared out evenly among all the triggers; the measurements use ``triggers``
            only.
        x_test: Held-out clean images for the measurements (default: split off ``x``).
        y_test: Their labels.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split, of the choice of stamped images and of the batch order;
            round ``r`` (from 0) uses ``seed + r``, also for its search.

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
    rounds = check_int("rounds", rounds, 1, MAX_ROUNDS)
    if search_config is not None and not isinstance(search_config, ScanConfig):
        raise InputTypeError("search_config must be a ScanConfig (got "
                             f"{type(search_config).__name__})")
    triggers = check_triggers(clf, triggers)
    labels = [t.label for t in triggers]
    further = check_further_triggers(clf, further_triggers, labels)
    x_fit, y_fit, x_hold, y_hold, split = fit_and_test(clf, x, y, x_test, y_test,
                                                       test_fraction, seed)
    held = HeldOut(x_hold, y_hold, triggers, clf.channels_first)
    before = held.measure(clf)
    per_epoch = math.ceil(len(x_fit) / batch_size)
    epochs_run = max(epochs, math.ceil(min_updates / per_epoch))
    n_rounds = min(rounds, epochs_run)
    done: list[UnlearningRound] = []
    searched: list[list[LabelResult]] = []  # the triggers found before each later round
    n_stamped = 0
    for r in range(n_rounds):
        stamped_with = list(triggers) + further
        if r:
            searched.append(search_again(clf, x_fit, y_fit, labels, search_config,
                                         (seed + r) % (MAX_SEED + 1)))
            stamped_with += searched[-1]
        round_epochs = epochs_run // n_rounds + (r < epochs_run % n_rounds)
        x_train, y_train, stamped = stamp_fraction(x_fit, y_fit, stamped_with, stamped_fraction,
                                                   clf.channels_first, seed + r)
        if stamped == 0:
            raise InputError(f"stamped_fraction={stamped_fraction} of {len(x_fit)} fitting "
                             "images stamps none: give more images or a larger "
                             "stamped_fraction")
        n_stamped = max(n_stamped, stamped)
        clf.fine_tune(x_train, y_train, epochs=round_epochs, learning_rate=learning_rate,
                      batch_size=batch_size, seed=seed + r)
        new = searched[-1] if r else []
        done.append(UnlearningRound(
            epochs=round_epochs, updates=round_epochs * per_epoch,
            norms={t.label: float(t.norm) for t in new},
            success_found={t.label: float(t.attack_success_rate) for t in new}))
    after = held.measure(clf)
    for entry, found in zip(done[1:], searched):
        entry.success_after = {t.label: attack_success_rate(
            clf, stamped_others(x_hold, y_hold, t, clf.channels_first)[0], t.label)
            for t in found}
    return UnlearningReport(
        epochs=epochs_run, learning_rate=learning_rate, stamped_fraction=stamped_fraction,
        n_train=len(x_fit), n_stamped=n_stamped,
        measurements=Measurements.between(before, after, len(x_hold)),
        split=split, updates=sum(d.updates for d in done), rounds=done,
        further_norms={t: [float(f.norm) for f in further if f.label == t]
                       for t in labels if any(f.label == t for f in further)},
        options={"batch_size": batch_size, "seed": seed, "epochs_requested": epochs,
                 "min_updates": min_updates, "rounds": rounds})


def search_again(clf: Classifier, x: np.ndarray, y: np.ndarray, labels: Sequence[int],
                 config: ScanConfig | None, seed: int) -> list[LabelResult]:
    """The smallest triggers of ``labels`` on the model as it is now, on the images ``x, y``.

    ``config`` (default: :class:`ScanConfig`'s defaults) with ``seed``, no progress bar, and
    a batch no larger than the images.
    """
    cfg = config if config is not None else ScanConfig()
    cfg = cfg.replace(seed=seed, progress=False, batch_size=min(cfg.batch_size, len(x)))
    return reverse_engineer(clf, x, y, cfg, labels=labels)
