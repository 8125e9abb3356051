"""Confirming a scan's borderline labels with further seeds, and grading its verdict.

After the first pass, the ``"confirmed"`` rule (:mod:`neuralcleanse.core.verdict`) searches the
labels whose anomaly index lies near the threshold, and the label with the smallest trigger,
again with ``confirm_seeds`` further seeds, and decides on each one's median norm:

1. :func:`plan_confirmation` picks the labels (none under the paper rule, for a partial scan or
   for a scan with restarts, whose medians are confirmed already);
2. :func:`search_confirmations` runs the searches (a label's search does not depend on which
   labels are searched with it, so these equal the labels' searches in a full scan with those
   seeds);
3. :func:`apply_confirmation` grades the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.config import MAX_SEED, ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.core.verdict import (
    confirm_norms,
    confirmation_candidates,
    expected_false_alarm_rate,
    grade,
    reference_mask,
    small_enough,
    verdict_word,
    with_small_triggers,
)
from neuralcleanse.search.reverse import reverse_engineer

#: What ``confirmation`` records for a scan that did not search every label.
PARTIAL = {"skipped": "partial scan"}


def further_seeds(cfg: ScanConfig) -> list[int]:
    """The seeds of the confirmation runs: ``seed + 1 .. seed + confirm_seeds`` (wrapping)."""
    return [(cfg.seed + i) % (MAX_SEED + 1) for i in range(1, cfg.confirm_seeds + 1)]


def is_partial(result: ScanResult) -> bool:
    """Whether the result lacks labels of the model (interrupted, or a subset was asked for)."""
    return bool(result.partial) or set(result.scanned_labels) != set(range(result.nb_classes))


def plan_confirmation(result: ScanResult, cfg: ScanConfig) -> list[int]:
    """The labels to search again: the first run's borderline labels and its smallest trigger.

    Args:
        result: The first run's result (every label searched once).
        cfg: The scan's settings (``verdict``, ``anomaly_threshold``, ``confirm_margin``,
            ``small_norm_ratio``).

    Returns:
        The candidates, smallest norm first; empty under the ``"paper"`` rule, for a partial
        result and for a result of several restarts.
    """
    if cfg.verdict != "confirmed" or is_partial(result) or result.restarts or not result.labels:
        return []
    return confirmation_candidates([r.norm for r in result.labels],
                                   [r.anomaly_index for r in result.labels],
                                   result.scanned_labels, cfg.anomaly_threshold,
                                   cfg.confirm_margin, cfg.small_norm_ratio,
                                   reference_mask(result.scanned_labels,
                                                  result.labels_without_data))


def search_confirmations(clf: Classifier, images: np.ndarray, targets: np.ndarray,
                         cfg: ScanConfig, labels: Sequence[int]
                         ) -> dict[int, list[LabelResult]]:
    """Search ``labels`` again with each further seed (:func:`further_seeds`).

    Args:
        clf: The wrapped model.
        images: The clean images of the first run.
        targets: Their labels.
        cfg: The first run's settings; only the seed changes.
        labels: The labels to search (from :func:`plan_confirmation`).

    Returns:
        Per label, its results under the further seeds, in seed order.
    """
    out: dict[int, list[LabelResult]] = {int(t): [] for t in labels}
    if not out:
        return out
    for seed in further_seeds(cfg):
        for r in reverse_engineer(clf, images, targets, cfg.replace(seed=seed),
                                  labels=list(out)):
            out[r.label].append(r)
    return out


def apply_confirmation(result: ScanResult, extra: Mapping[int, Sequence[LabelResult]],
                       cfg: ScanConfig, seconds: float) -> ScanResult:
    """The graded result: verdict, suspicious labels and the confirmation's record.

    * ``"confirmed"`` rule, one run per label: each label of ``extra`` takes the median of its
      norms over the first run and its further runs (its mask, pattern and attack success rate
      from the run at the median), the outlier test is run again on the confirmed norms, and
      labels that crossed the threshold in a single run only are suspicious.
    * ``"confirmed"`` rule with restarts: the medians decide; labels flagged by some restart but
      not by the medians are suspicious.
    * ``"paper"`` rule, or a partial result: the first run's flags; nothing is suspicious.

    Args:
        result: The first run's result.
        extra: Per label searched again, its results under the further seeds (from
            :func:`search_confirmations`); must cover :func:`plan_confirmation`'s labels.
        cfg: The scan's settings.
        seconds: Wall time of the further searches (added to ``wall_seconds``).

    Returns:
        A new :class:`ScanResult`; ``result`` is left as it is.

    Raises:
        InputError: When ``extra`` misses a planned label or names one that was not scanned.
    """
    n = result.nb_classes
    if is_partial(result):
        return dataclasses.replace(result, verdict=verdict_word(result.flagged_labels),
                                   suspicious_labels=[], confirmation=dict(PARTIAL))
    if cfg.verdict == "paper":
        rate = None if result.restarts else expected_false_alarm_rate(
            "paper", n, cfg.anomaly_threshold)
        return dataclasses.replace(result, verdict=verdict_word(result.flagged_labels),
                                   suspicious_labels=[],
                                   confirmation={"rule": "paper",
                                                 "expected_false_alarm_rate": rate})
    if result.restarts:
        return _grade_restarts(result, cfg)
    planned = plan_confirmation(result, cfg)
    missing = sorted(set(planned) - {int(t) for t in extra})
    if missing:
        raise InputError(f"the confirmation runs miss the planned labels {missing}")
    first_norms = {r.label: r.norm for r in result.labels}
    candidates = sorted((int(t) for t in extra), key=lambda t: (first_norms.get(t, np.inf), t))
    runs = {t: [float(r.norm) for r in extra[t]] for t in candidates}
    reference = reference_mask(result.scanned_labels, result.labels_without_data)
    conf = confirm_norms(result.scanned_labels, list(first_norms.values()), runs,
                         cfg.anomaly_threshold, reference=reference,
                         max_norm_ratio=cfg.max_norm_ratio,
                         small_norm_ratio=cfg.small_norm_ratio)
    labels = []
    further: list[LabelResult] = []
    mitigable = set(conf.flagged) | set(conf.suspicious)
    for i, r in enumerate(result.labels):
        chosen = r if r.label not in runs else [r, *extra[r.label]][conf.picked[r.label]]
        labels.append(dataclasses.replace(chosen, norm=float(conf.norms[i]),
                                          anomaly_index=float(conf.anomaly_index[i])))
        if r.label in runs and r.label in mitigable:
            further += [dataclasses.replace(other, anomaly_index=math.nan)
                        for k, other in enumerate([r, *extra[r.label]])
                        if k != conf.picked[r.label]]
    first_steps = int(sum(r.steps for r in result.labels))
    extra_steps = int(sum(r.steps for t in candidates for r in extra[t]))
    record: dict[str, Any] = {
        "rule": "confirmed",
        "threshold": float(cfg.anomaly_threshold),
        "margin": float(cfg.confirm_margin),
        "max_norm_ratio": float(cfg.max_norm_ratio),
        "small_norm_ratio": float(cfg.small_norm_ratio),
        "seeds": further_seeds(cfg),
        "candidates": candidates,
        "first_run": {
            "labels": result.scanned_labels,
            "norms": [float(r.norm) for r in result.labels],
            "anomaly_index": [float(r.anomaly_index) for r in result.labels],
            "flagged": [int(t) for t in result.flagged_labels],
            "label_steps": first_steps,
        },
        "runs": {str(t): runs[t] for t in candidates},
        "runs_label_steps": extra_steps,
        "extra_label_steps_share": extra_steps / first_steps if first_steps else None,
        "extra_seconds": float(seconds),
        "expected_false_alarm_rate": expected_false_alarm_rate("confirmed", n,
                                                               cfg.anomaly_threshold),
    }
    return dataclasses.replace(result, labels=labels, flagged_labels=conf.flagged,
                               median_norm=conf.median, mad=conf.mad, verdict=conf.verdict,
                               suspicious_labels=conf.suspicious, confirmation=record,
                               wall_seconds=result.wall_seconds + float(seconds),
                               further_triggers=further)


def _grade_restarts(result: ScanResult, cfg: ScanConfig) -> ScanResult:
    """The ``"confirmed"`` rule on a scan of several restarts: the medians decide."""
    details = result.restarts
    per_run = details.get("flagged_per_run", [])
    crossed = {int(t) for flags in per_run for t in flags} | set(result.flagged_labels)
    norms = {r.label: float(r.norm) for r in result.labels}
    flagged = with_small_triggers(
        small_enough(result.flagged_labels, norms, result.median_norm, cfg.max_norm_ratio),
        norms, norms, result.median_norm, cfg.small_norm_ratio)
    verdict, suspicious = grade(flagged, crossed, norms)
    labels = [int(t) for t in details.get("labels", result.scanned_labels)]
    run_norms = details.get("norms", [])
    steps = [int(s) for s in details.get("label_steps", [])]
    first_steps = steps[0] if steps else 0
    extra_steps = int(sum(steps[1:]))
    record: dict[str, Any] = {
        "rule": "confirmed",
        "by": "restarts",
        "restarts": int(details.get("n", len(run_norms))),
        "threshold": float(cfg.anomaly_threshold),
        "margin": None,
        "max_norm_ratio": float(cfg.max_norm_ratio),
        "small_norm_ratio": float(cfg.small_norm_ratio),
        "seeds": [int(s) for s in details.get("seeds", [])[1:]],
        "candidates": sorted(labels, key=lambda t: (norms.get(t, np.inf), t)),
        "first_run": {
            "labels": labels,
            "norms": run_norms[0] if run_norms else [],
            "anomaly_index": (details.get("anomaly_index") or [[]])[0],
            "flagged": per_run[0] if per_run else [],
            "label_steps": first_steps,
        },
        "runs": {str(t): [row[j] for row in run_norms[1:]] for j, t in enumerate(labels)},
        "runs_label_steps": extra_steps,
        "extra_label_steps_share": extra_steps / first_steps if first_steps else None,
        "extra_seconds": float(sum(details.get("wall_seconds", [])[1:])),
        # measured for the default confirmation only, not for restarts
        "expected_false_alarm_rate": None,
    }
    return dataclasses.replace(result, flagged_labels=flagged, verdict=verdict,
                               suspicious_labels=suspicious, confirmation=record)
