"""Stamped examples: what a reversed trigger does to one clean image, before and after a repair.

:func:`stamped_examples` gives one example per flagged label and per suspicious label (marked
as such): the first clean image whose true label is another, the same image stamped with the
label's reversed trigger, and the model's predicted labels for both. After a mitigation,
:func:`examples_after` gives, for the same two images, the repaired model's predictions
(pruning, unlearning) or the input filter's decisions (refused, or accepted with the model's
prediction).

The examples are plain JSON values (images as nested lists in the model's layout and raw value
range). The scan's report keeps them in ``data_info["stamped_examples"]`` and a mitigation's
``mitigation.json`` keeps the answers after it in its own ``"stamped_examples"`` list (see
:mod:`neuralcleanse.io.report`). Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from neuralcleanse.backends.base import Classifier
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.mitigation.stamping import stamp

if TYPE_CHECKING:
    from neuralcleanse.mitigation.result import MitigationResult

#: The kinds of label an example is made for: flagged, suspicious, or asked for by ``labels=``.
KINDS = ("flagged", "suspicious", "chosen")


def example_labels(result: ScanResult) -> list[tuple[int, str]]:
    """The labels that get an example, flagged ones first, then suspicious ones, with their kind."""
    chosen = [(int(t), "flagged") for t in result.flagged_labels]
    flagged = {t for t, _ in chosen}
    chosen += [(int(t), "suspicious") for t in result.suspicious_labels if int(t) not in flagged]
    return chosen


def stamped_example(clf: Classifier, images: np.ndarray, targets: np.ndarray,
                    trigger: LabelResult, kind: str | None = None) -> dict[str, Any] | None:
    """One label's example: the first clean image of another class, stamped, and predicted.

    Args:
        clf: The wrapped model that was scanned.
        images: The scan's clean images, in the model's layout and raw value range.
        targets: Their true labels.
        trigger: The label's reversed trigger.
        kind: ``"flagged"``, ``"suspicious"`` or ``"chosen"``, recorded as ``kind`` when given.

    Returns:
        ``label``, ``kind`` (when given), ``source_label`` (the clean image's true label),
        ``clean_image`` and ``image`` (the clean image and the stamped one, nested lists),
        ``clean_prediction`` and ``prediction`` (the model's labels for them); ``None`` when
        every image has the trigger's label.
    """
    others = np.flatnonzero(np.asarray(targets) != trigger.label)
    if not len(others):
        return None
    clean = np.asarray(images[others[:1]], dtype=np.float32)
    stamped = stamp(clean, trigger.mask, trigger.pattern, clf.channels_first)
    before, after = clf.predict(np.concatenate([clean, stamped])).argmax(axis=1)
    example: dict[str, Any] = {"label": int(trigger.label)}
    if kind is not None:
        example["kind"] = kind
    example.update(source_label=int(np.asarray(targets)[others[0]]),
                   clean_image=clean[0].tolist(), image=stamped[0].tolist(),
                   clean_prediction=int(before), prediction=int(after))
    return example


def stamped_examples(clf: Classifier, images: np.ndarray, targets: np.ndarray,
                     result: ScanResult, labels: Sequence[int] | None = None
                     ) -> list[dict[str, Any]]:
    """The examples of a scan: one per flagged label, then one per suspicious label.

    Cheap: two images per label go through the model.

    Args:
        clf: The wrapped model that was scanned.
        images: The scan's clean images, in the model's layout and raw value range.
        targets: Their true labels.
        result: The scan's result (its reversed triggers, flagged and suspicious labels).
        labels: Labels to make examples for instead (scanned ones; those neither flagged nor
            suspicious are of kind ``"chosen"``).

    Returns:
        The examples (:func:`stamped_example`), each with its ``kind``; a label whose every
        image has that label gets none.

    Raises:
        InputError: When ``labels`` names a label that was not scanned.
    """
    kinds = dict(example_labels(result))
    if labels is None:
        wanted = list(kinds.items())
    else:
        missing = [int(t) for t in labels if int(t) not in result.scanned_labels]
        if missing:
            raise InputError(f"labels {missing} were not scanned (scanned: "
                             f"{result.scanned_labels})")
        wanted = [(int(t), kinds.get(int(t), "chosen")) for t in labels]
    examples = []
    for label, kind in wanted:
        example = stamped_example(clf, images, targets, result.label(label), kind)
        if example is not None:
            examples.append(example)
    return examples


def _example_images(example: Any, shape: tuple[int, ...]) -> tuple[int, np.ndarray] | None:
    """An example's label and its clean and stamped images ``(2, *shape)``, or ``None``."""
    if not isinstance(example, Mapping):
        return None
    try:
        label = example["label"]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            return None
        pair = np.asarray([example["clean_image"], example["image"]], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        return None
    if pair.shape[1:] != shape or not np.all(np.isfinite(pair)):
        return None
    return int(label), pair


def examples_after(mitigation: MitigationResult, examples: Sequence[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    """What the mitigated predictor makes of each example's clean and stamped image.

    Pruning and unlearning: the repaired model's predicted labels. Filtering: the filter's
    decisions; a refused image has no prediction (``None``), an accepted one the model's.
    Examples that are malformed or do not fit the model's input shape are left out.

    Args:
        mitigation: The result of :func:`neuralcleanse.mitigate`, with its model or filter (not
            one read back from JSON).
        examples: Examples of the scan (:func:`stamped_examples`, or the list read from
            ``data_info["stamped_examples"]`` of its report).

    Returns:
        Per example: ``label``, ``method``, ``mitigated`` (whether the label is one the
        mitigation was for), ``refused`` and ``prediction`` for the stamped image,
        ``clean_refused`` and ``clean_prediction`` for the clean one.

    Raises:
        InputError: When the result holds neither a repaired model nor a filter.
    """
    input_filter = mitigation.input_filter
    clf = input_filter.classifier if input_filter is not None else mitigation.classifier
    if clf is None:
        raise InputError("this MitigationResult holds no model (read back from JSON?)")
    found = [p for p in (_example_images(e, tuple(clf.input_shape)) for e in examples)
             if p is not None]
    if not found:
        return []
    x = np.concatenate([pair for _, pair in found])
    if input_filter is not None:
        decisions = input_filter.decisions(x)
        refused = np.asarray(decisions.refused, dtype=bool)
        predicted = np.asarray(decisions.predictions)
    else:
        predicted = clf.predict_labels(x)
        refused = np.zeros(len(x), dtype=bool)
    mitigated = {int(t) for t in mitigation.labels}
    entries = []
    for i, (label, _) in enumerate(found):
        clean, stamped = 2 * i, 2 * i + 1
        entries.append({
            "label": label, "method": mitigation.method, "mitigated": label in mitigated,
            "refused": bool(refused[stamped]),
            "prediction": None if refused[stamped] else int(predicted[stamped]),
            "clean_refused": bool(refused[clean]),
            "clean_prediction": None if refused[clean] else int(predicted[clean])})
    return entries
