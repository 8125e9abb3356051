"""Mitigation of a detected backdoor: input filtering, neuron pruning and unlearning.

:func:`mitigate` is the modern entry point: it wraps the model, works on a copy and returns a
:class:`MitigationResult`. The in-place functions :func:`filter_inputs`, :func:`prune` and
:func:`unlearn` act on an already wrapped :class:`~neuralcleanse.backends.Classifier` (the
ART-compatible estimators use them). None of this code imports a deep-learning framework: the
backend does the framework work (activations, pruning masks, fine-tuning, saving).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..api import prepare, versions
from ..backends.base import Preprocessing
from ..errors import InputError, InputTypeError
from ..results import LabelResult, ScanResult
from .filtering import FilteringReport, InputFilter, filter_inputs
from .metrics import DEFAULT_TEST_FRACTION, DataSplit, Measurements
from .pruning import PruningPoint, PruningReport, prune, rank_by_activation_gap
from .result import MitigationResult
from .stamping import stamp
from .unlearning import UnlearningReport, unlearn

__all__ = ["METHODS", "DataSplit", "FilteringReport", "InputFilter", "Measurements",
           "MitigationResult", "PruningPoint", "PruningReport", "UnlearningReport",
           "filter_inputs", "mitigate", "prune", "rank_by_activation_gap", "select_triggers",
           "stamp", "unlearn"]

#: The mitigation methods, and the options each accepts besides the common ones.
METHODS: dict[str, tuple[str, ...]] = {
    "filtering": ("top_fraction", "target_fpr", "batch_size"),
    "pruning": ("max_fraction", "target_asr", "step_fraction", "batch_size"),
    "unlearning": ("epochs", "learning_rate", "stamped_fraction", "batch_size"),
}


def select_triggers(scan_result: ScanResult | Sequence[LabelResult] | str | Path,
                    labels: Sequence[int] | None = None) -> list[LabelResult]:
    """Pick the reversed triggers to mitigate from a scan result.

    Args:
        scan_result: A :class:`~neuralcleanse.results.ScanResult`, the path or text of its JSON,
            or a list of :class:`~neuralcleanse.results.LabelResult` (all of them are used).
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


def mitigate(model: Any, x: np.ndarray, y: np.ndarray,
             scan_result: ScanResult | Sequence[LabelResult] | str | Path,
             method: str = "unlearning", *, x_test: np.ndarray | None = None,
             y_test: np.ndarray | None = None, layer: str | int | None = None,
             labels: Sequence[int] | None = None, output: str | None = None,
             channels_first: bool | None = None,
             clip_values: tuple[float, float] | None = None,
             preprocessing: Preprocessing = None, device: Any = None,
             test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0,
             **options: Any) -> MitigationResult:
    """Remove or neutralise the backdoor of the flagged labels, on a copy of the model.

    The reversed triggers of the flagged labels are stamped on clean images of the other
    classes, which keep their true labels. Every figure in the result is measured on held-out
    data: ``x_test, y_test`` when given, else a seeded, class-stratified ``test_fraction`` of
    ``x, y`` (the split is reported).

    Args:
        model: A ``torch.nn.Module``, a Keras model or a wrapped classifier; never modified.
        x: Clean raw images, as for :func:`~neuralcleanse.scan`.
        y: Their labels (integers or one-hot).
        scan_result: The scan's result (or its JSON), or a list of reversed triggers.
        method: ``"filtering"`` (refuse triggered inputs), ``"pruning"`` (silence the trigger's
            neurons) or ``"unlearning"`` (fine-tune with stamped images).
        x_test: Held-out clean images for the measurements.
        y_test: Their labels.
        layer: Layer for filtering and pruning: a name or index, or ``None`` for the input of
            the final classification layer.
        labels: Labels to mitigate (default: the scan's flagged labels).
        output: ``"logits"`` or ``"probabilities"``, as for :func:`~neuralcleanse.scan`.
        channels_first: Input layout (default: the framework's convention).
        clip_values: Raw input range (default: inferred from ``x``).
        preprocessing: ``(subtrahend, divisor)`` or a callable applied to raw inputs.
        device: Compute device for PyTorch models.
        test_fraction: Share of ``x`` held out when no test data is given, in (0, 1).
        seed: Seed of the split and of every random choice.
        **options: Options of the method. Filtering: ``top_fraction`` (0.01), ``target_fpr``
            (0.05). Pruning: ``max_fraction`` (0.3), ``target_asr`` (0.05), ``step_fraction``
            (0.01). Unlearning: ``epochs`` (5), ``learning_rate`` (1e-4), ``stamped_fraction``
            (0.2). All: ``batch_size``.

    Returns:
        A :class:`MitigationResult`: the repaired copy (``.model``) or, for filtering, the
        :class:`InputFilter` that wraps the unchanged model, plus the measurements.

    Raises:
        ValueError: On an unknown method or option, a bad option value, malformed data, an
            unknown layer, or when no label is flagged.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(map(repr, METHODS))} "
                         f"(got {method!r})")
    unknown = sorted(set(options) - set(METHODS[method]))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; it "
                         f"accepts: {', '.join(METHODS[method])}")
    if method == "unlearning" and layer is not None:
        raise InputError("layer is not used by unlearning (it fine-tunes the whole model)")
    triggers = select_triggers(scan_result, labels)
    clf, images, targets = prepare(model, x, y, output=output, channels_first=channels_first,
                                   clip_values=clip_values, preprocessing=preprocessing,
                                   device=device)
    common: dict[str, Any] = dict(x_test=x_test, y_test=y_test, test_fraction=test_fraction,
                                  seed=seed)
    result_filter: InputFilter | None = None
    repaired = None
    report: FilteringReport | PruningReport | UnlearningReport
    if method == "filtering":
        result_filter = filter_inputs(clf, images, targets, triggers, layer=layer, **common,
                                      **options)
        assert result_filter.report is not None
        report = result_filter.report
    else:
        repaired = clf.copy()
        if method == "pruning":
            report = prune(repaired, images, targets, triggers, layer=layer, **common,
                           **options)
        else:
            report = unlearn(repaired, images, targets, triggers, **common, **options)
    return MitigationResult(method=method, labels=[t.label for t in triggers], report=report,
                            wall_seconds=time.perf_counter() - started,
                            model_info=clf.describe(), versions=versions(),
                            classifier=repaired, input_filter=result_filter)
