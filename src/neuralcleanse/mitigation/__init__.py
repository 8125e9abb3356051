"""Mitigation of a detected backdoor: input filtering, neuron pruning and unlearning.

:func:`neuralcleanse.mitigate` (in :mod:`neuralcleanse.frontends.api`) wraps the model, works on a
copy and returns a :class:`MitigationResult`. The in-place functions :func:`filter_inputs`,
:func:`prune` and :func:`unlearn` act on an already wrapped
:class:`~neuralcleanse.backends.Classifier` (the ART-compatible estimators use them). None of this
code imports a deep-learning framework: the backend does the framework work (activations, pruning
masks, fine-tuning, saving).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from neuralcleanse.core.errors import InputError, InputTypeError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.mitigation.filtering import FilteringReport, InputFilter, filter_inputs
from neuralcleanse.mitigation.metrics import DataSplit, Measurements
from neuralcleanse.mitigation.pruning import (
    PruningPoint,
    PruningReport,
    prune,
    rank_by_activation_gap,
)
from neuralcleanse.mitigation.result import MitigationResult
from neuralcleanse.mitigation.stamping import stamp
from neuralcleanse.mitigation.unlearning import UnlearningReport, unlearn

__all__ = ["METHODS", "DataSplit", "FilteringReport", "InputFilter", "Measurements",
           "MitigationResult", "PruningPoint", "PruningReport", "UnlearningReport",
           "filter_inputs", "prune", "rank_by_activation_gap", "select_triggers",
           "stamp", "unlearn"]

#: The mitigation methods, and the options each accepts besides the common ones.
METHODS: dict[str, tuple[str, ...]] = {
    "filtering": ("score", "top_fraction", "target_fpr", "fpr_confidence", "batch_size",
                  "ranking", "max_neurons"),
    "pruning": ("max_fraction", "target_asr", "step_fraction", "batch_size"),
    "unlearning": ("epochs", "learning_rate", "stamped_fraction", "batch_size", "min_updates",
                   "rounds", "all_seeds"),
}


def select_triggers(scan_result: ScanResult | Sequence[LabelResult] | str | Path,
                    labels: Sequence[int] | None = None) -> list[LabelResult]:
    """Pick the reversed triggers to mitigate from a scan result.

    Args:
        scan_result: A :class:`~neuralcleanse.core.results.ScanResult`, the path or text of its
            JSON, or a list of :class:`~neuralcleanse.core.results.LabelResult` (all of them
            are used).
        labels: Labels to mitigate (default: the scan's flagged labels). They must have been
            scanned.

    Returns:
        The chosen labels' results.

    Raises:
        ValueError: If no label is flagged (nothing to mitigate) or a label was not scanned.
        TypeError: If ``scan_result`` has another type.
    """
    if isinstance(scan_result, (str, Path)):
        scan_result = ScanResult.from_json(scan_result)
    if isinstance(scan_result, ScanResult):
        available = {r.label: r for r in scan_result.labels}
        if labels is None:
            if not scan_result.flagged_labels:
                raise InputError("the scan flagged no label, so there is nothing to mitigate; "
                                 "pass labels=[...] to mitigate chosen labels anyway")
            labels = scan_result.flagged_labels
    elif isinstance(scan_result, (list, tuple)) and all(
            isinstance(r, LabelResult) for r in scan_result):
        available = {r.label: r for r in scan_result}
        if labels is None:
            labels = list(available)
    else:
        raise InputTypeError("scan_result must be a ScanResult, its JSON (path or text) or a list "
                        f"of LabelResult (got {type(scan_result).__name__})")
    chosen = [int(t) for t in labels]
    if not chosen:
        raise InputError("labels is empty: there is nothing to mitigate")
    missing = [t for t in chosen if t not in available]
    if missing:
        raise InputError(f"labels {missing} have no reversed trigger in scan_result (scanned: "
                         f"{sorted(available)})")
    return [available[t] for t in chosen]
