"""Input filtering: refuse inputs whose activations in one layer look like the reversed trigger's.

For each flagged label, the reversed trigger is stamped on clean images of other classes and
the layer's neurons are ranked by how much their mean activation rises over the label's own
clean images (in units of the neuron's clean spread by default; see
:func:`rank_trigger_neurons`). An input's score for that label is a weighted sum of the kept
neurons' activations, standardised with its mean and spread on clean images; its overall score
is the largest of its labels' scores. Two scores (:data:`SCORES`):

* ``"fisher"`` (the default) keeps every neuron of the layer (at most
  :data:`FISHER_MAX_NEURONS`) and weighs them with Fisher's linear discriminant between the
  stamped images and the label's own clean images: the difference of their mean activations,
  whitened with the clean images' covariance, shrunk by :data:`FISHER_SHRINKAGE` towards its
  mean variance (the layer has more neurons than a small clean set can estimate a covariance
  of). Because the weights are fitted to the clean images, the threshold is calibrated on
  out-of-fold scores (:data:`CALIBRATION_FOLDS` folds): each clean image is scored with weights
  fitted without it, as an unseen input would be;
* ``"mean"`` (the paper's filter) keeps the top ``top_fraction`` of the ranked neurons (at most
  ``max_neurons``) with equal weights, calibrated on the fitting images' own scores.

The threshold (:func:`refusal_threshold`) holds ``target_fpr`` on clean inputs with a stated
confidence (``fpr_confidence``, 80 % by default): it is the lowest of the clean scores above
which new clean inputs are refused at more than ``target_fpr`` with probability at most
``1 - fpr_confidence`` (an order statistic, distribution-free). It is raised where needed to hold
``target_fpr`` on each flagged label's own clean images as well, from a normal fit to their
scores (:func:`own_label_threshold`). A refused input gets a prediction row of zeros.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.mitigation.inputs import check_fraction, check_int, fit_and_test, model_images
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
from neuralcleanse.mitigation.stamping import check_triggers, stamped_others

#: How an input's score combines the kept neurons; the default was chosen on the tune half of
#: the model zoo (``benchmarks/zoo_mitigation.py``, see docs/zoo.md): of the flagged
#: patch-trigger models, the mean of the top neurons met the target (>= 95 % of real-triggered
#: inputs refused at 5 % FPR) on 55 % of the tune half and 16 % of the validate half, Fisher's
#: discriminant on 85 % and 68 %.
SCORES = ("fisher", "mean")
DEFAULT_SCORE = "fisher"
#: Defaults of the ``"mean"`` score (chosen on the zoo's tune half as well): the former top 1 %
#: ranked against all clean images refused a median 77 % of real-triggered inputs and a fifth
#: of the target class's own clean images.
DEFAULT_TOP_FRACTION = 0.1
#: At most this many trigger neurons per label for the ``"mean"`` score: the zoo's models watch
#: 16 to 84 neurons (so the top tenth is 2 to 9 of them); on a layer of 512 neurons a tenth
#: dilutes the score (a third-party MNIST BadNet: 84 % of triggered inputs refused at 52
#: neurons, 97 % at 16).
DEFAULT_MAX_NEURONS = 16
#: The ``"fisher"`` score keeps the whole layer, up to this many of its best-ranked neurons (its
#: covariance matrix has this many squared entries).
FISHER_MAX_NEURONS = 2048
#: Share of the covariance replaced by its mean variance on the diagonal (zoo tune half: 0.03,
#: 0.05, 0.1, 0.2 and 0.3 met the target on 75 %, 75 %, 85 %, 80 % and 70 % of the models).
FISHER_SHRINKAGE = 0.1
#: Folds of the out-of-fold calibration of the ``"fisher"`` score: at most
#: ``CALIBRATION_FOLDS`` of at least ``MIN_PER_FOLD`` images each; with fewer than
#: ``MIN_FOLDS`` such folds the clean images are calibrated on their own scores. Ten folds
#: rather than five: weights fitted on 80 % of a small set score new images more widely than
#: the filter's own, so five folds set the threshold too high (150 images, 64 neurons: 1.4 %
#: of new clean inputs refused for a 5 % target, 2.2 % with ten; on the model zoo both met the
#: filtering target on the same number of models).
CALIBRATION_FOLDS = 10
MIN_FOLDS = 5
MIN_PER_FOLD = 5
MAX_NEURONS_LIMIT = 1_000_000
DEFAULT_TARGET_FPR = 0.05
#: Confidence that the threshold refuses at most ``target_fpr`` of new clean inputs (see
#: :func:`refusal_threshold`; 0.5 aims at ``target_fpr`` on average). Chosen on the zoo's tune
#: half (docs/zoo.md): confidences 0.5, 0.7, 0.8, 0.9 and 0.95 met the filtering target on 17,
#: 17, 18, 18 and 17 of its 20 flagged patch models (the tie went to the less cautious).
DEFAULT_FPR_CONFIDENCE = 0.8
#: How trigger neurons are ranked (see :func:`rank_trigger_neurons`); ``"clean"`` was the only
#: choice of the first versions. ``"both"`` suits models with few classes, where the stamped
#: images' own classes' features also rise over the flagged label's images.
RANKINGS = ("target_z", "target", "both", "clean")
DEFAULT_RANKING = "target_z"


@dataclass
class FilteringReport:
    """What :func:`filter_inputs` fitted and measured.

    Attributes:
        layer: The layer spec whose neurons are watched (``"final_layer_input"`` by default).
        n_neurons: Neurons in that layer.
        neurons: The trigger neurons of each flagged label.
        threshold: Score above which an input is refused.
        target_fpr: The false-positive rate the threshold was chosen for.
        false_positive_rate: Share of held-out clean inputs refused.
        detection_rate: Share of held-out stamped inputs (all flagged labels' reversed triggers
            on images of other classes) refused.
        detection_rate_by_label: The detection rate of each label's reversed trigger.
        measurements: Clean accuracy and reversed-trigger attack success before and after.
        split: How the data was divided between fitting and measuring.
    """

    layer: str | int
    n_neurons: int
    neurons: dict[int, list[int]]
    threshold: float
    target_fpr: float
    false_positive_rate: float
    detection_rate: float
    detection_rate_by_label: dict[int, float]
    measurements: Measurements
    split: DataSplit
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values."""
        return {"layer": self.layer, "n_neurons": int(self.n_neurons),
                "neurons": {str(k): [int(n) for n in v] for k, v in self.neurons.items()},
                "threshold": float(self.threshold), "target_fpr": float(self.target_fpr),
                "false_positive_rate": float(self.false_positive_rate),
                "detection_rate": finite_or_none(self.detection_rate),
                "detection_rate_by_label": rates_to_dict(self.detection_rate_by_label),
                "measurements": self.measurements.to_dict(), "split": self.split.to_dict(),
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilteringReport:
        """Inverse of :meth:`to_dict`."""
        return cls(layer=data["layer"], n_neurons=int(data["n_neurons"]),
                   neurons={int(k): [int(n) for n in v] for k, v in data["neurons"].items()},
                   threshold=float(data["threshold"]), target_fpr=float(data["target_fpr"]),
                   false_positive_rate=float(data["false_positive_rate"]),
                   detection_rate=none_to_nan(data["detection_rate"]),
                   detection_rate_by_label=rates_from_dict(data["detection_rate_by_label"]),
                   measurements=Measurements.from_dict(data["measurements"]),
                   split=DataSplit.from_dict(data["split"]), options=data.get("options", {}))


class InputFilter:
    """A predictor wrapper that refuses inputs carrying a reversed trigger.

    Built by :func:`filter_inputs`; the wrapped classifier is used as is and never modified.

    Attributes:
        classifier: The wrapped model.
        layer: The layer whose neurons are watched.
        neurons: Trigger neurons per flagged label.
        weights: The weight of each of those neurons in the label's score (equal weights
            summing to one for the ``"mean"`` score).
        center: Mean clean score per flagged label.
        scale: Spread of the clean score per flagged label.
        threshold: Overall score above which an input is refused.
        report: What was measured when the filter was fitted (set by :func:`filter_inputs`).
        file_info: What a filter file recorded about the fitting (set by
            :func:`~neuralcleanse.io.filter_loading.load_filter`, kept when the filter is saved
            again): ``n_neurons``, ``target_fpr``, ``fpr_confidence``,
            ``false_positive_rate``, ``detection_rate``, ``top_fraction``, ``score`` and
            ``model_sha256``.
    """

    def __init__(self, classifier: Classifier, layer: str | int | None,
                 neurons: dict[int, np.ndarray], center: dict[int, float],
                 scale: dict[int, float], threshold: float,
                 weights: dict[int, np.ndarray] | None = None) -> None:
        self.classifier = classifier
        self.layer = layer
        self.neurons = {int(k): np.asarray(v, dtype=np.int64) for k, v in neurons.items()}
        given = {} if weights is None else {int(k): v for k, v in weights.items()}
        self.weights = {k: (np.asarray(given[k], dtype=np.float64) if k in given
                            else equal_weights(len(idx)))
                        for k, idx in self.neurons.items()}
        self.center = dict(center)
        self.scale = dict(scale)
        self.threshold = float(threshold)
        self.report: FilteringReport | None = None
        self.file_info: dict[str, Any] = {}

    @property
    def nb_classes(self) -> int:
        """Number of outputs of the wrapped model."""
        return self.classifier.nb_classes

    def _scores_of_activations(self, acts: np.ndarray) -> np.ndarray:
        per_label = [(acts[:, idx] @ self.weights[label] - self.center[label])
                     / self.scale[label] for label, idx in self.neurons.items()]
        return np.max(np.stack(per_label), axis=0)

    def scores(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Suspicion score of each input (larger means more trigger-like)."""
        images = model_images(self.classifier, x, "x")
        acts = self.classifier.neuron_activations(images, self.layer, batch_size=batch_size)
        return self._scores_of_activations(acts)

    def is_flagged(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Whether each input would be refused (boolean array of length N)."""
        return self.scores(x, batch_size=batch_size) > self.threshold

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's outputs, with a row of zeros for every refused input."""
        images = model_images(self.classifier, x, "x")
        out = self.classifier.predict(images, batch_size=batch_size)
        out[self.is_flagged(images, batch_size=batch_size)] = 0
        return out

    __call__ = predict

    def decisions(self, x: np.ndarray, batch_size: int = 256) -> FilterDecisions:
        """Score every input, refuse those above the threshold, predict the others.

        Returns:
            The :class:`FilterDecisions`: per input its score, whether it is refused and the
            model's predicted label (``-1`` for a refused input).
        """
        images = model_images(self.classifier, x, "x")
        scores = self.scores(images, batch_size=batch_size)
        refused = scores > self.threshold
        predictions = self.classifier.predict_labels(images, batch_size=batch_size)
        predictions = np.where(refused, -1, predictions).astype(np.int64)
        return FilterDecisions(scores=scores, refused=refused, predictions=predictions,
                               threshold=self.threshold)

    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the filter to a small JSON file that :func:`~neuralcleanse.load_filter` reads.

        The file holds the layer, the trigger neurons, centre and spread of each flagged
        label, the threshold, the target and measured rates, and the model facts the filter
        depends on (input shape, layout, value range, output kind, preprocessing); never the
        model itself. It is written completely before it replaces an existing file.

        Args:
            path: The file to write (``.json`` by convention).
            model_sha256: The SHA-256 of the model file the filter was fitted on (64 hex
                digits), checked when the filter is loaded with ``model_path=``; default: the
                one the filter was loaded with, if any.

        Returns:
            The path written.

        Raises:
            InputError: When the filter has no finite threshold or ``model_sha256`` is not
                64 hex digits.
        """
        from neuralcleanse.io.filter_files import write_filter

        return write_filter(self, path, model_sha256=model_sha256)


@dataclass
class FilterDecisions:
    """What an :class:`InputFilter` decided for a batch of inputs.

    Attributes:
        scores: Suspicion score of each input (larger means more trigger-like).
        refused: Whether each input is refused (its score exceeds ``threshold``).
        predictions: The model's predicted label of each input, ``-1`` where it is refused.
        threshold: The filter's threshold.
    """

    scores: np.ndarray
    refused: np.ndarray
    predictions: np.ndarray
    threshold: float


def check_ranking(ranking: Any) -> str:
    """Return ``ranking`` if it is one of :data:`RANKINGS`, or raise ``InputError``."""
    if not isinstance(ranking, str) or ranking not in RANKINGS:
        raise InputError(f"ranking must be one of {', '.join(map(repr, RANKINGS))} "
                         f"(got {ranking!r})")
    return ranking


def check_score(score: Any) -> str:
    """Return ``score`` if it is one of :data:`SCORES`, or raise ``InputError``."""
    if not isinstance(score, str) or score not in SCORES:
        raise InputError(f"score must be one of {', '.join(map(repr, SCORES))} (got {score!r})")
    return score


@dataclass(frozen=True)
class NeuronChoice:
    """Which neurons score an input and how (the resolved options of :func:`filter_inputs`)."""

    score: str
    top_fraction: float
    max_neurons: int
    ranking: str

    @classmethod
    def resolve(cls, score: str, top_fraction: float | None, max_neurons: int | None,
                ranking: str | None) -> NeuronChoice:
        """Check the options; ``None`` takes the score's default."""
        score = check_score(score)
        fisher = score == "fisher"
        if top_fraction is None:
            top_fraction = 1.0 if fisher else DEFAULT_TOP_FRACTION
        if max_neurons is None:
            max_neurons = FISHER_MAX_NEURONS if fisher else DEFAULT_MAX_NEURONS
        return cls(score=score, top_fraction=check_fraction("top_fraction", top_fraction),
                   max_neurons=check_int("max_neurons", max_neurons, 1, MAX_NEURONS_LIMIT),
                   ranking=check_ranking(DEFAULT_RANKING if ranking is None else ranking))

    def keep(self, n_neurons: int) -> int:
        """How many of a layer's ``n_neurons`` neurons are kept per label."""
        return min(max(1, int(math.ceil(self.top_fraction * n_neurons - 1e-9))),
                   self.max_neurons)

    def fit(self, clean: np.ndarray, y: np.ndarray, stamped: np.ndarray, label: int,
            keep: int) -> tuple[np.ndarray, np.ndarray]:
        """The kept neurons of ``label`` and their weights.

        Args:
            clean: Activations ``(N, neurons)`` of clean images.
            y: Their labels.
            stamped: Activations of clean images of other classes carrying the trigger.
            label: The flagged label.
            keep: How many neurons to keep.
        """
        top = rank_trigger_neurons(stamped, clean, y, label, self.ranking)[:keep]
        if self.score == "mean":
            return top, equal_weights(len(top))
        return top, fisher_weights(clean[:, top], clean[y == label][:, top], stamped[:, top])


def equal_weights(n: int) -> np.ndarray:
    """``1 / n`` for each of ``n`` neurons: the ``"mean"`` score's weights.

    A filter given no weights for a label (a version-1 filter file) weighs it this way too.
    """
    return np.full(n, 1.0 / n)


def fisher_weights(clean: np.ndarray, own: np.ndarray, stamped: np.ndarray) -> np.ndarray:
    """Fisher's discriminant between stamped images and the flagged label's own clean images.

    Args:
        clean: Activations ``(N, d)`` of clean images (the covariance is theirs).
        own: Activations of the flagged label's clean images (all of ``clean`` when empty).
        stamped: Activations of images carrying the trigger.

    Returns:
        ``d`` weights: ``C⁻¹ (mean(stamped) - mean(own))``, where ``C`` is the covariance of
        ``clean`` with :data:`FISHER_SHRINKAGE` of it replaced by its mean variance on the
        diagonal (zeros when the activations do not vary).
    """
    clean = np.asarray(clean, dtype=np.float64)
    own = clean if len(own) == 0 else np.asarray(own, dtype=np.float64)
    rise = np.asarray(stamped, dtype=np.float64).mean(axis=0) - own.mean(axis=0)
    d = clean.shape[1]
    cov = np.cov(clean, rowvar=False).reshape(d, d) if len(clean) > 1 else np.zeros((d, d))
    mean_variance = float(np.trace(cov)) / d
    if not mean_variance > 0:
        return np.zeros(d)
    cov = (1.0 - FISHER_SHRINKAGE) * cov + FISHER_SHRINKAGE * mean_variance * np.eye(d)
    return np.linalg.solve(cov, rise)


def refusal_threshold(scores: np.ndarray, target_fpr: float, confidence: float) -> float:
    """The lowest clean score that bounds the false-positive rate with the given confidence.

    For ``n`` clean scores and new clean inputs drawn like them, the share of new inputs above
    the ``j``-th highest score follows a Beta(``j``, ``n + 1 - j``) distribution, so it exceeds
    ``target_fpr`` with the probability that fewer than ``j`` of ``n`` draws at rate
    ``target_fpr`` succeed (a binomial tail). The threshold is the ``j``-th highest score for
    the largest ``j`` whose tail is at most ``1 - confidence``. A quantile at ``1 - target_fpr``
    instead aims at the rate only on average: on a few hundred images it overshoots it in
    about half of the draws.

    Args:
        scores: Clean scores (one per image), at least one.
        target_fpr: The false-positive rate to hold, in (0, 1).
        confidence: The probability of holding it, in (0, 1).

    Returns:
        That score; the highest score when there are too few to give the confidence at all
        (fewer than :func:`images_for_confidence`: 32 at 5 % and 80 %).
    """
    ranked = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    n = len(ranked)
    k = np.arange(n + 1)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    log_pmf = (log_factorial[n] - log_factorial[k] - log_factorial[n - k]
               + k * math.log(target_fpr) + (n - k) * math.log1p(-target_fpr))
    # P(fewer than j successes) for j = 1..n+1; the j-th highest score works while it is small
    tail = np.cumsum(np.exp(log_pmf))
    j = int(np.searchsorted(tail, 1.0 - confidence, side="right"))
    return float(ranked[min(max(j, 1), n) - 1])


def images_for_confidence(target_fpr: float, confidence: float) -> int:
    """Fewest clean scores whose highest bounds ``target_fpr`` with ``confidence``.

    ``n`` scores suffice when ``(1 - target_fpr) ** n <= 1 - confidence``: 32 at 5 % and 80 %.
    """
    return math.ceil(math.log1p(-confidence) / math.log1p(-target_fpr) - 1e-9)


def own_label_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """The score above which ``target_fpr`` of a flagged label's own clean images fall.

    A normal fit (mean plus the normal quantile times the spread): a label has a few dozen
    clean images in a small clean set, where an empirical 95th percentile is decided by its
    top two or three images (on the model zoo it raised the threshold by up to twice the
    all-images one, docs/zoo.md).

    Args:
        scores: The label's clean scores, at least one.
        target_fpr: The share of them to refuse, in (0, 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores.mean() + NormalDist().inv_cdf(1.0 - target_fpr) * scores.std())


def _centre_and_spread(scores: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of clean scores (spread 1 where they do not vary)."""
    return float(scores.mean()), float(scores.std()) or 1.0


def calibration_folds(n_images: int) -> int:
    """Folds of the out-of-fold calibration for ``n_images`` clean images (0: none)."""
    folds = min(CALIBRATION_FOLDS, n_images // MIN_PER_FOLD)
    return folds if folds >= MIN_FOLDS else 0


def out_of_fold_scores(choice: NeuronChoice, clean: np.ndarray, y: np.ndarray,
                       stamped: dict[int, np.ndarray], keep: int, seed: int,
                       folds: int = CALIBRATION_FOLDS) -> np.ndarray:
    """Each clean image's overall score under weights fitted without it.

    The clean images are split into ``folds`` seeded folds; for each fold the
    neurons and weights of every label are fitted on the other folds (their clean images and
    the stamped copies of their images of other classes) and standardised on those folds'
    clean scores, then the fold is scored.

    Args:
        choice: The resolved options.
        clean: Activations of the clean fitting images.
        y: Their labels.
        stamped: Per flagged label, activations of its stamped images, one row per image of
            another class in ``clean`` order.
        keep: Neurons kept per label.
        seed: Seed of the folds.
        folds: How many folds (at least 2).

    Returns:
        ``N`` scores, the largest over the labels as :meth:`InputFilter.scores` gives it.
    """
    fold = np.random.default_rng(seed).permutation(len(clean)) % folds
    out = np.full((len(stamped), len(clean)), -np.inf)
    for i, (label, acts) in enumerate(stamped.items()):
        others = y != label
        for k in range(folds):
            train = fold != k
            part = acts[train[others]]  # the stamped copies of this part's images
            top, w = choice.fit(clean[train], y[train], part if len(part) else acts, label,
                                keep)
            center, scale = _centre_and_spread(clean[train][:, top] @ w)
            out[i, ~train] = (clean[~train][:, top] @ w - center) / scale
    return out.max(axis=0)


def rank_trigger_neurons(stamped: np.ndarray, clean: np.ndarray, y: np.ndarray, label: int,
                         ranking: str) -> np.ndarray:
    """Neurons ordered from the most to the least trigger-sensitive.

    Args:
        stamped: Activations ``(N, neurons)`` of the clean images of other classes than
            ``label``, carrying its reversed trigger.
        clean: Activations of all clean fitting images.
        y: Their labels.
        label: The flagged label.
        ranking: One of :data:`RANKINGS`. The rise of the stamped images' mean activation is
            taken over: all clean images (``"clean"``); the label's own clean images
            (``"target"``; ``"target_z"`` divides it by the neuron's clean spread); the smaller
            of the rises over the label's own images and over the same images unstamped
            (``"both"``). Without clean images of the label, over all clean images.

    Returns:
        Neuron indices, most trigger-sensitive first (ties keep the lower index first).
    """
    own = clean[y == label]
    triggered = stamped.mean(axis=0)
    if ranking == "clean" or len(own) == 0:
        gap = triggered - clean.mean(axis=0)
    else:
        gap = triggered - own.mean(axis=0)
        if ranking == "both":
            gap = np.minimum(gap, triggered - clean[y != label].mean(axis=0))
        elif ranking == "target_z":
            spread = clean.std(axis=0)
            gap = gap / np.where(spread > 0, spread, np.inf)
    return np.argsort(-gap, kind="stable")


def filter_inputs(clf: Classifier, x: np.ndarray, y: np.ndarray,
                  triggers: Sequence[LabelResult], *, layer: str | int | None = None,
                  score: str = DEFAULT_SCORE, top_fraction: float | None = None,
                  target_fpr: float = DEFAULT_TARGET_FPR, ranking: str | None = None,
                  max_neurons: int | None = None,
                  fpr_confidence: float = DEFAULT_FPR_CONFIDENCE,
                  x_test: np.ndarray | None = None,
                  y_test: np.ndarray | None = None,
                  test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
                  batch_size: int = 256) -> InputFilter:
    """Fit an input filter for the flagged labels' reversed triggers and measure it.

    Args:
        clf: The wrapped model (not modified).
        x: Clean raw images in the model's layout (or ``(N, H, W)`` for one channel).
        y: Their labels (integers or one-hot).
        triggers: Reversed triggers of the flagged labels.
        layer: Layer whose neurons are watched: a name or index from ``clf.layer_names()``, or
            ``None`` for the input of the final classification layer. Convolutional layers
            count one neuron per channel.
        score: How the kept neurons make an input's score (:data:`SCORES`): ``"fisher"``
            weighs them with Fisher's discriminant and calibrates the threshold out of fold;
            ``"mean"`` averages them (see the module's description).
        top_fraction: Share of the layer's neurons kept per label, in (0, 1] (at least one);
            ``None``: 1 for ``"fisher"``, :data:`DEFAULT_TOP_FRACTION` for ``"mean"``.
        max_neurons: Most neurons kept per label (>= 1); ``None``:
            :data:`FISHER_MAX_NEURONS` for ``"fisher"``, :data:`DEFAULT_MAX_NEURONS` for
            ``"mean"``.
        target_fpr: Most clean inputs the threshold refuses, in (0, 1): of all clean inputs
            (with ``fpr_confidence``, see :func:`refusal_threshold`) and of each flagged
            label's own (see :func:`own_label_threshold`).
        fpr_confidence: Probability that the threshold refuses at most ``target_fpr`` of new
            clean inputs, in (0, 1) (:data:`DEFAULT_FPR_CONFIDENCE`; 0.5: on average).
        ranking: How the neurons are ranked before the top ones are kept (:data:`RANKINGS`,
            see :func:`rank_trigger_neurons`; ``None``: :data:`DEFAULT_RANKING`): ranking
            against the flagged label's own clean images (``"target"``, ``"both"``,
            ``"target_z"``) leaves out the neurons the label's genuine images excite as well,
            which would make the filter refuse that class; ``"clean"`` ranks by the rise over
            all clean images.
        x_test: Held-out clean images for the measurements (default: split off ``x``).
        y_test: Their labels.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split and of the calibration folds.
        batch_size: Batch size of the forward passes.

    Returns:
        The :class:`InputFilter`, with its :class:`FilteringReport` in ``.report``.

    Raises:
        ValueError: On a bad option, malformed data, mismatched triggers or an unknown layer.
    """
    choice = NeuronChoice.resolve(score, top_fraction, max_neurons, ranking)
    target_fpr = check_fraction("target_fpr", target_fpr, allow_one=False)
    fpr_confidence = check_fraction("fpr_confidence", fpr_confidence, allow_one=False)
    batch_size = check_int("batch_size", batch_size, 1)
    triggers = check_triggers(clf, triggers)
    x_fit, y_fit, x_hold, y_hold, split = fit_and_test(clf, x, y, x_test, y_test,
                                                       test_fraction, seed)
    clean = clf.neuron_activations(x_fit, layer, batch_size=batch_size)
    n_neurons = clean.shape[1]
    keep = choice.keep(n_neurons)
    stamped: dict[int, np.ndarray] = {}
    neurons: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray] = {}
    center: dict[int, float] = {}
    scale: dict[int, float] = {}
    for trig in triggers:
        xs, _ = stamped_others(x_fit, y_fit, trig, clf.channels_first)
        if len(xs) == 0:
            raise InputError(f"x has no image of a class other than {trig.label} to stamp "
                             "its trigger on")
        stamped[trig.label] = clf.neuron_activations(xs, layer, batch_size=batch_size)
        top, w = choice.fit(clean, y_fit, stamped[trig.label], trig.label, keep)
        neurons[trig.label], weights[trig.label] = top, w
        center[trig.label], scale[trig.label] = _centre_and_spread(clean[:, top] @ w)
    filt = InputFilter(clf, layer, neurons, center, scale, threshold=math.inf,
                       weights=weights)
    folds = calibration_folds(len(clean)) if choice.score == "fisher" else 0
    fit_scores = (out_of_fold_scores(choice, clean, y_fit, stamped, keep, seed, folds) if folds
                  else filt._scores_of_activations(clean))
    needed = images_for_confidence(target_fpr, fpr_confidence)
    if len(fit_scores) < needed:
        warnings.warn(f"{len(fit_scores)} clean fitting images are too few to hold "
                      f"target_fpr={target_fpr:g} with fpr_confidence={fpr_confidence:g} "
                      f"({needed} needed): the threshold is their highest score, which holds "
                      "it with less confidence; give more clean images or a lower "
                      "fpr_confidence", UserWarning, stacklevel=2)
    # target_fpr on all clean inputs AND on each flagged label's own clean images: a filter
    # that refuses the target class's genuine inputs is no repair
    filt.threshold = max([refusal_threshold(fit_scores, target_fpr, fpr_confidence)]
                         + [own_label_threshold(fit_scores[y_fit == t.label], target_fpr)
                            for t in triggers if np.any(y_fit == t.label)])

    held = HeldOut(x_hold, y_hold, triggers, clf.channels_first, batch_size)
    before, after = held.measure(clf), held.measure(filt)
    fpr = float(filt.is_flagged(x_hold, batch_size).mean())
    detected = {label: (float(filt.is_flagged(xs, batch_size).mean()) if len(xs) else math.nan)
                for label, xs in held.stamped.items()}
    n_stamped = sum(len(xs) for xs in held.stamped.values())
    overall = (sum(detected[label] * len(xs) for label, xs in held.stamped.items() if len(xs))
               / n_stamped) if n_stamped else math.nan
    filt.report = FilteringReport(
        layer=Classifier.FINAL_LAYER_INPUT if layer is None else layer, n_neurons=n_neurons,
        neurons={k: v.tolist() for k, v in neurons.items()}, threshold=filt.threshold,
        target_fpr=target_fpr, false_positive_rate=fpr, detection_rate=overall,
        detection_rate_by_label=detected,
        measurements=Measurements.between(before, after, len(x_hold)),
        split=split, options={"score": choice.score, "top_fraction": choice.top_fraction,
                              "target_fpr": target_fpr, "fpr_confidence": fpr_confidence,
                              "ranking": choice.ranking,
                              "max_neurons": choice.max_neurons,
                              "calibration_folds": folds})
    return filt
