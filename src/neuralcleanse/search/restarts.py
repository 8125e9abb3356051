"""Combining several seeded trigger searches of the same model into one verdict."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from neuralcleanse.core.outliers import anomaly_indices
from neuralcleanse.core.results import MAX_FURTHER_PER_LABEL, LabelResult


def _picks(norms: np.ndarray) -> list[int]:
    """Per label (column of ``norms``, one row per run): the run closest to the median norm."""
    median = np.median(norms, axis=0)
    return [int(np.argmin(np.abs(norms[:, j] - median[j]))) for j in range(norms.shape[1])]


def combine_restarts(runs: list[list[LabelResult]], seeds: list[int],
                     anomaly_threshold: float, labels_without_data: Sequence[int] = ()
                     ) -> tuple[list[LabelResult], dict[str, Any]]:
    """Merge per-seed results: per label the median norm, and how stable the verdict is.

    Args:
        runs: One list of label results per seed, each covering the same labels.
        seeds: The seed of each run.
        anomaly_threshold: Threshold of the per-run outlier tests.
        labels_without_data: Labels without clean images, left out of each run's median and
            MAD as in :meth:`ScanResult.from_labels`.

    Returns:
        ``(labels, details)``: for each label the run whose norm is closest to the median, with
        ``norm`` set to the median norm (the verdict is then taken on the medians); ``details``
        holds per-run norms, anomaly indices, flagged labels, how many runs flagged each label
        and the spread of the norm and of the anomaly index.
    """
    labels = [r.label for r in runs[0]]
    norms = np.array([[r.norm for r in run] for run in runs])  # (runs, labels)
    reference = np.array([t not in set(labels_without_data) for t in labels])
    per_run = [anomaly_indices(row, anomaly_threshold, labels=np.array(labels),
                               reference=reference if reference.any() else None)
               for row in norms]
    index = np.array([rep.anomaly_index for rep in per_run])
    median = np.median(norms, axis=0)
    merged = [dataclasses.replace(runs[pick][j], norm=float(median[j]))
              for j, pick in enumerate(_picks(norms))]
    flag_counts = {str(t): sum(t in rep.flagged for rep in per_run) for t in labels}
    details = {
        "n": len(runs),
        "seeds": [int(s) for s in seeds],
        "labels": [int(t) for t in labels],
        "norms": norms.round(6).tolist(),
        "anomaly_index": index.round(6).tolist(),
        "flagged_per_run": [rep.flagged for rep in per_run],
        "label_steps": [int(sum(r.steps for r in run)) for run in runs],
        "flag_counts": flag_counts,
        "norm_spread": (norms.max(axis=0) - norms.min(axis=0)).round(6).tolist(),
        "anomaly_index_spread": (index.max(axis=0) - index.min(axis=0)).round(6).tolist(),
    }
    return merged, details


def other_restarts(runs: list[list[LabelResult]], labels: Collection[int]
                   ) -> list[LabelResult]:
    """The runs :func:`combine_restarts` did not keep, for ``labels``: their further triggers.

    Each label keeps the run nearest its median norm; its other runs are other ways into the
    label, which unlearning stamps beside the kept one
    (:attr:`~neuralcleanse.core.results.ScanResult.further_triggers`). At most
    :data:`~neuralcleanse.core.results.MAX_FURTHER_PER_LABEL` per label, those nearest the
    median; each keeps its own norm, its anomaly index is NaN (it took no part in the verdict).

    Args:
        runs: One list of label results per seed, each covering the same labels.
        labels: The labels whose other runs to return (the flagged and suspicious ones).

    Returns:
        The other runs' results, by label and then seed.
    """
    wanted = {int(t) for t in labels}
    norms = np.array([[r.norm for r in run] for run in runs])
    median = np.median(norms, axis=0)
    out: list[LabelResult] = []
    for j, pick in enumerate(_picks(norms)):
        if runs[0][j].label not in wanted:
            continue
        others = sorted((k for k in range(len(runs)) if k != pick),
                        key=lambda k: (abs(norms[k, j] - median[j]), k))
        out += [dataclasses.replace(runs[k][j], anomaly_index=math.nan)
                for k in sorted(others[:MAX_FURTHER_PER_LABEL])]
    return out
