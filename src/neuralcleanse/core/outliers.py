"""Outlier test on the reversed triggers' norms (median absolute deviation, one-sided)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from neuralcleanse.core.errors import InputError

#: Makes the MAD a consistent estimator of the standard deviation for normal data.
MAD_CONSISTENCY = 1.4826


@dataclass(frozen=True)
class AnomalyReport:
    """Anomaly indices of a set of trigger norms.

    Attributes:
        anomaly_index: ``(median - norm) / MAD`` per label; large means an unusually small trigger.
        median: Median of the norms.
        mad: Consistency-scaled median absolute deviation of the norms.
        flagged: Labels whose index exceeds the threshold, smallest norm first.
        threshold: The threshold that was applied.
    """

    anomaly_index: np.ndarray
    median: float
    mad: float
    flagged: list[int]
    threshold: float


def anomaly_indices(norms: np.ndarray, threshold: float = 2.0,
                    labels: np.ndarray | None = None,
                    reference: np.ndarray | None = None) -> AnomalyReport:
    """Compute the anomaly index of every norm and flag the unusually small ones.

    Args:
        norms: One trigger norm per label (1-D, finite).
        threshold: A label is flagged when its anomaly index is strictly greater than this.
        labels: The label of each norm (defaults to ``0..len(norms)-1``).
        reference: Which norms the median and MAD are computed from (a boolean mask, default
            all). Every norm, in the reference or not, gets its index against them and can be
            flagged; a scan leaves labels without clean images out of the reference.

    Returns:
        The indices, the median, the MAD and the flagged labels sorted by norm.

    Raises:
        InputError: If ``norms`` is empty, not 1-D or not finite, or ``reference`` is not a
            boolean mask of the same length selecting at least one norm.
    """
    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"norms must be a non-empty 1-D array (got shape {values.shape})")
    if not np.all(np.isfinite(values)):
        raise InputError("norms must all be finite")
    ids = np.arange(values.size) if labels is None else np.asarray(labels)
    if reference is None:
        ref = values
    else:
        chosen = np.asarray(reference)
        if chosen.dtype != bool or chosen.shape != values.shape or not chosen.any():
            raise InputError("reference must be a boolean mask over the norms selecting at "
                             "least one of them")
        ref = values[chosen]
    median = float(np.median(ref))
    mad = MAD_CONSISTENCY * float(np.median(np.abs(ref - median)))
    if mad == 0.0:
        warnings.warn("the median absolute deviation of the trigger norms is 0; every anomaly "
                      "index is set to 0 and no label is flagged", RuntimeWarning, stacklevel=2)
        index = np.zeros_like(values)
    else:
        index = (median - values) / mad
    order = np.argsort(values, kind="stable")
    flagged = [int(ids[i]) for i in order if index[i] > threshold]
    return AnomalyReport(anomaly_index=index, median=median, mad=mad, flagged=flagged,
                         threshold=float(threshold))
