"""Typed results of a scan, serialisable to JSON and back.

The JSON is written and read through :mod:`neuralcleanse.core.strict_json`; the checks here are
those of the report's own fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.config import INT_RANGES
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.layout import mask_for_layout
from neuralcleanse.core.outliers import anomaly_indices
from neuralcleanse.core.strict_json import (
    dumps,
    finite_list,
    finite_or_none,
    is_finite_number,
    json_boolean,
    json_float_array,
    json_integer,
    json_kind,
    json_number,
    json_object,
    json_safe,
    json_shape,
    loads,
    read_json_file,
    required,
    shown,
)
from neuralcleanse.core.verdict import RULES, VERDICTS, verdict_word

SCHEMA_VERSION = 1
#: Most outputs a model in a report may have.
MAX_CLASSES = 1_000_000
#: Most further triggers a report may keep per label: the first run and the most further
#: seeds the confirmation allows, less the kept one.
MAX_FURTHER_PER_LABEL = INT_RANGES["confirm_seeds"][1]


@dataclass
class LabelResult:
    """The reversed trigger of one output label.

    Attributes:
        label: The output label the trigger sends images to.
        mask: Mask in [0, 1], shape ``(H, W)``, shared by all colour channels.
        pattern: Pattern in the model's raw input range, shape of one input.
        norm: L1 norm of ``mask`` (the quantity the outlier test compares).
        attack_success_rate: Share of stamped clean images of other labels classified as
            ``label``, over the step in which the trigger was kept (or the last step).
        converged: Whether the attack success threshold was ever reached.
        steps: Optimisation steps run for this label.
        seconds: Wall time spent on this label (its share of the batched passes).
        final_cost: The norm cost when the search stopped.
        anomaly_index: Filled in once all labels are known.
    """

    label: int
    mask: np.ndarray
    pattern: np.ndarray
    norm: float
    attack_success_rate: float
    converged: bool
    steps: int
    seconds: float
    final_cost: float
    anomaly_index: float = 0.0

    def __repr__(self) -> str:
        """One line of the label's numbers (never the mask or pattern arrays)."""
        from neuralcleanse.io.notebook import label_repr

        return label_repr(self)

    @property
    def trigger(self) -> np.ndarray:
        """The visible trigger ``mask * pattern`` in the input layout."""
        shape = tuple(self.pattern.shape)
        channels_first = len(shape) == 3 and shape[-2:] == tuple(self.mask.shape)
        return mask_for_layout(self.mask, shape, channels_first) * self.pattern

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """Return a JSON-friendly dict; ``arrays=False`` leaves out mask and pattern."""
        out: dict[str, Any] = {
            "label": int(self.label),
            "norm": finite_or_none(self.norm),
            "anomaly_index": finite_or_none(self.anomaly_index),
            "attack_success_rate": finite_or_none(self.attack_success_rate),
            "converged": bool(self.converged),
            "steps": int(self.steps),
            "seconds": finite_or_none(self.seconds),
            "final_cost": finite_or_none(self.final_cost),
        }
        if arrays:
            out["mask_shape"] = list(self.mask.shape)
            out["pattern_shape"] = list(self.pattern.shape)
            out["mask"] = finite_list(self.mask)
            out["pattern"] = finite_list(self.pattern)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelResult:
        """Inverse of :meth:`to_dict` (with arrays); ``null`` numbers are read as NaN.

        Raises:
            InputError: When a field is missing or has the wrong type or shape.
        """
        data = json_object(data, "a label result")
        mask_shape = json_shape(required(data, "mask_shape"), "mask_shape", (2,))
        pattern_shape = json_shape(required(data, "pattern_shape"), "pattern_shape", (2, 3))
        if not (pattern_shape == mask_shape or pattern_shape[-2:] == mask_shape
                or pattern_shape[:2] == mask_shape):
            raise InputError(f"pattern_shape {list(pattern_shape)} does not fit mask_shape "
                             f"{list(mask_shape)}")
        return cls(label=json_integer(required(data, "label"), "label"),
                   mask=json_float_array(required(data, "mask"), mask_shape, "mask"),
                   pattern=json_float_array(required(data, "pattern"), pattern_shape, "pattern"),
                   norm=json_number(required(data, "norm"), "norm"),
                   attack_success_rate=json_number(required(data, "attack_success_rate"),
                                                   "attack_success_rate"),
                   converged=json_boolean(required(data, "converged"), "converged"),
                   steps=json_integer(required(data, "steps"), "steps"),
                   seconds=json_number(required(data, "seconds"), "seconds"),
                   final_cost=json_number(required(data, "final_cost"), "final_cost"),
                   anomaly_index=json_number(data.get("anomaly_index", 0.0), "anomaly_index"))


@dataclass
class ScanResult:
    """Outcome of a Neural Cleanse scan.

    Attributes:
        labels: One :class:`LabelResult` per scanned label, ordered by label.
        nb_classes: Number of outputs of the model.
        flagged_labels: Labels judged to be backdoor targets, smallest trigger first.
        median_norm: Median of the trigger norms.
        mad: Scaled median absolute deviation of the norms.
        anomaly_threshold: Anomaly index above which a label is flagged.
        config: The search settings used (see :class:`~neuralcleanse.core.config.ScanConfig`).
        model_info: Framework, input shape, layout, value range, preprocessing, output kind.
        data_info: Number of clean images and per-class counts.
        versions: Package and framework versions.
        wall_seconds: Total wall time of the scan.
        partial: True when not every requested label was searched (an interrupted scan).
        restarts: Per-restart details when the scan ran several seeds (empty otherwise).
        labels_without_data: Scanned labels that had no clean images. Their triggers were
            searched on the images of the other classes and they can be flagged, but the
            median and MAD are computed without them (empty for reports written before).
        verdict: ``"backdoor"`` (a label is flagged), ``"suspicious"`` (nothing is flagged,
            but a label crossed the anomaly threshold in a single run and the confirmation did
            not uphold it) or ``"clean"``; see :mod:`neuralcleanse.core.verdict`. Derived from
            ``flagged_labels`` (backdoor or clean) when not given.
        suspicious_labels: The suspicious labels, smallest trigger first (never flagged ones).
        confirmation: How the verdict was reached (JSON-friendly): the rule, the borderline
            labels searched again, their norms under the further seeds, the first run's norms,
            indices and flags, the extra label-steps and seconds, and the expected false-alarm
            rate; ``{"skipped": "partial scan"}`` for a partial scan, empty when unknown.
        further_triggers: The other triggers the confirmation (or the restarts) found for the
            flagged and suspicious labels: each such label keeps the run at its median norm in
            ``labels``, and its other runs (the first run, further seeds or other restarts) are
            listed here, by label and then seed. Unlearning stamps them beside the kept ones.
            Empty under the paper rule without restarts, for partial scans, and in reports
            written before they were kept.
    """

    labels: list[LabelResult]
    nb_classes: int
    flagged_labels: list[int]
    median_norm: float
    mad: float
    anomaly_threshold: float
    config: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    partial: bool = False
    restarts: dict[str, Any] = field(default_factory=dict)
    labels_without_data: list[int] = field(default_factory=list)
    verdict: str = ""
    suspicious_labels: list[int] = field(default_factory=list)
    confirmation: dict[str, Any] = field(default_factory=dict)
    further_triggers: list[LabelResult] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = verdict_word(self.flagged_labels, self.suspicious_labels)

    @classmethod
    def from_labels(cls, labels: list[LabelResult], nb_classes: int, anomaly_threshold: float,
                    labels_without_data: Sequence[int] | None = None, **info: Any) -> ScanResult:
        """Run the outlier test over ``labels`` and assemble the result.

        Args:
            labels: The label results.
            nb_classes: Number of outputs of the model.
            anomaly_threshold: Anomaly index above which a label is flagged.
            labels_without_data: Labels that had no clean images; by default those whose
                count in ``data_info["class_counts"]`` is 0. They get an anomaly index and can
                be flagged, but the median and MAD come from the other labels (from all of
                them when no scanned label has clean images).
            **info: The other fields of :class:`ScanResult`. A ``partial`` result's
                ``confirmation`` defaults to ``{"skipped": "partial scan"}`` (its verdict is
                the paper rule's on the labels searched).
        """
        labels = sorted(labels, key=lambda r: r.label)
        norms = np.array([r.norm for r in labels])
        if labels_without_data is None:
            counts = (info.get("data_info") or {}).get("class_counts")
            labels_without_data = [r.label for r in labels
                                   if isinstance(counts, list) and r.label < len(counts)
                                   and counts[r.label] == 0]
        without = sorted({int(t) for t in labels_without_data} & {r.label for r in labels})
        if len(labels) >= 1:
            reference = np.array([r.label not in without for r in labels])
            report = anomaly_indices(norms, anomaly_threshold,
                                     labels=np.array([r.label for r in labels]),
                                     reference=reference if reference.any() else None)
            for r, a in zip(labels, report.anomaly_index):
                r.anomaly_index = float(a)
            flagged, median, mad = report.flagged, report.median, report.mad
        else:
            flagged, median, mad = [], math.nan, math.nan
        if info.get("partial") and "confirmation" not in info:
            info["confirmation"] = {"skipped": "partial scan"}
        return cls(labels=labels, nb_classes=nb_classes, flagged_labels=flagged,
                   median_norm=median, mad=mad, anomaly_threshold=float(anomaly_threshold),
                   labels_without_data=without, **info)

    def _by_label(self, values: list[Any], fill: Any) -> np.ndarray:
        out = np.full(self.nb_classes, fill, dtype=np.float64)
        for r, v in zip(self.labels, values):
            out[r.label] = v
        return out

    @property
    def scanned_labels(self) -> list[int]:
        """The labels that were searched."""
        return [r.label for r in self.labels]

    @property
    def norms(self) -> np.ndarray:
        """L1 norm of every label's mask, indexed by label (NaN for labels not scanned)."""
        return self._by_label([r.norm for r in self.labels], np.nan)

    @property
    def anomaly_index(self) -> np.ndarray:
        """Anomaly index of every label, indexed by label (NaN for labels not scanned)."""
        return self._by_label([r.anomaly_index for r in self.labels], np.nan)

    @property
    def attack_success_rates(self) -> np.ndarray:
        """Attack success rate of every label's kept trigger, indexed by label."""
        return self._by_label([r.attack_success_rate for r in self.labels], np.nan)

    @property
    def masks(self) -> np.ndarray:
        """Masks stacked in label order, shape ``(n_scanned, H, W)``."""
        return np.stack([r.mask for r in self.labels])

    @property
    def patterns(self) -> np.ndarray:
        """Patterns stacked in label order, shape ``(n_scanned, *input_shape)``."""
        return np.stack([r.pattern for r in self.labels])

    @property
    def is_backdoored(self) -> bool:
        """Whether any label was flagged."""
        return bool(self.flagged_labels)

    def label(self, label: int) -> LabelResult:
        """Return the result of one label."""
        for r in self.labels:
            if r.label == label:
                return r
        raise KeyError(f"label {label} was not scanned (scanned: {self.scanned_labels})")

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """Return the whole result as JSON-friendly values."""
        return {
            "schema_version": self.schema_version,
            "flagged_labels": [int(t) for t in self.flagged_labels],
            "nb_classes": int(self.nb_classes),
            "median_norm": finite_or_none(self.median_norm),
            "mad": finite_or_none(self.mad),
            "anomaly_threshold": finite_or_none(self.anomaly_threshold),
            "partial": bool(self.partial),
            "wall_seconds": finite_or_none(self.wall_seconds),
            "config": json_safe(self.config),
            "model_info": json_safe(self.model_info),
            "data_info": json_safe(self.data_info),
            "versions": json_safe(self.versions),
            "restarts": json_safe(self.restarts),
            "labels_without_data": [int(t) for t in self.labels_without_data],
            "verdict": str(self.verdict),
            "suspicious_labels": [int(t) for t in self.suspicious_labels],
            "confirmation": json_safe(self.confirmation),
            "labels": [r.to_dict(arrays=arrays) for r in self.labels],
            "further_triggers": [r.to_dict(arrays=arrays) for r in self.further_triggers],
        }

    def to_json(self, path: str | Path | None = None, arrays: bool = True) -> str:
        """Serialise to JSON; also write it to ``path`` when one is given.

        Numbers that are not finite are written as ``null`` (JSON has no NaN or Infinity).
        """
        text = dumps(self.to_dict(arrays=arrays))
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanResult:
        """Inverse of :meth:`to_dict`; ``null`` numbers are read as NaN.

        Raises:
            InputError: On an unknown schema version, or when a field is missing or has the
                wrong type, shape or value.
        """
        data = json_object(data, "a scan report")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:  # not true, not 1.0
            raise InputError(f"unsupported report schema_version {shown(version)} "
                             f"(this neuralcleanse reads version {SCHEMA_VERSION})")
        nb_classes = json_integer(required(data, "nb_classes"), "nb_classes", low=1,
                                  high=MAX_CLASSES)
        entries = required(data, "labels")
        if not isinstance(entries, list):
            raise InputError(f"labels must be a list (got {json_kind(entries)})")
        labels = []
        for i, entry in enumerate(entries):
            try:
                labels.append(LabelResult.from_dict(entry))
            except InputError as exc:
                raise InputError(f"labels[{i}]: {exc}") from None
        scanned = [r.label for r in labels]
        if len(set(scanned)) != len(scanned):
            raise InputError("labels lists a label twice")
        outside = [t for t in scanned if not 0 <= t < nb_classes]
        if outside:
            raise InputError(f"labels {outside[:5]} are outside 0..{nb_classes - 1}")
        flagged = required(data, "flagged_labels")
        if not isinstance(flagged, list):
            raise InputError(f"flagged_labels must be a list (got {json_kind(flagged)})")
        flagged = [json_integer(t, "flagged_labels") for t in flagged]
        if not set(flagged) <= set(scanned):
            raise InputError(f"flagged_labels {sorted(set(flagged) - set(scanned))[:5]} "
                             "were not scanned")
        model_info = json_object(data.get("model_info", {}), "model_info")
        clip = model_info.get("clip_values")
        if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(
                is_finite_number(v) for v in clip)):
            raise InputError("model_info.clip_values must be two finite numbers or null")
        data_info = json_object(data.get("data_info", {}), "data_info")
        counts = data_info.get("class_counts")
        if counts is not None and not (isinstance(counts, list) and all(
                is_finite_number(n) for n in counts)):
            raise InputError("data_info.class_counts must be a list of numbers")
        suspicious = _suspicious_labels(data.get("suspicious_labels", []), scanned, flagged)
        verdict = data.get("verdict", verdict_word(flagged, suspicious))
        if verdict not in VERDICTS or verdict != verdict_word(flagged, suspicious):
            raise InputError(f"verdict {shown(verdict)} does not fit flagged_labels {flagged} "
                             f"and suspicious_labels {suspicious} (it is \"backdoor\" when a "
                             "label is flagged, else \"suspicious\" when one is suspicious, "
                             "else \"clean\")")
        return cls(labels=labels, nb_classes=nb_classes, flagged_labels=flagged,
                   median_norm=json_number(required(data, "median_norm"), "median_norm"),
                   mad=json_number(required(data, "mad"), "mad"),
                   anomaly_threshold=json_number(required(data, "anomaly_threshold"),
                                                 "anomaly_threshold"),
                   config=json_object(required(data, "config"), "config"),
                   model_info=model_info, data_info=data_info,
                   versions=json_object(data.get("versions", {}), "versions"),
                   wall_seconds=json_number(data.get("wall_seconds", 0.0), "wall_seconds"),
                   partial=json_boolean(data.get("partial", False), "partial"),
                   restarts=_restarts(data.get("restarts", {}), scanned),
                   labels_without_data=_labels_without_data(
                       data.get("labels_without_data", []), scanned),
                   verdict=verdict, suspicious_labels=suspicious,
                   confirmation=_confirmation(data.get("confirmation", {}), scanned),
                   further_triggers=_further_triggers(data.get("further_triggers", []),
                                                      labels, flagged + suspicious))

    @classmethod
    def from_json(cls, source: str | Path) -> ScanResult:
        """Read a result from a JSON string or a path to a JSON file.

        A :class:`~pathlib.Path` is always read as a file; a string is JSON text when it starts
        with ``{``. JSON's non-standard ``NaN`` and ``Infinity`` are read as ``null``.

        Raises:
            InputError: When the text is not JSON or not a scan report (the message names the
                file); OSError when the file cannot be read.
        """
        if isinstance(source, str) and source.lstrip().startswith("{"):
            return cls.from_dict(loads(source, "the report text"))
        path = Path(source)
        data = read_json_file(path)
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{str(path)!r} is not a neuralcleanse scan report: {exc}"
                             ) from None

    def __repr__(self) -> str:
        """One line: labels, flagged labels, median, MAD, partial (never the arrays)."""
        from neuralcleanse.io.notebook import scan_repr

        return scan_repr(self)

    def _repr_html_(self) -> str:
        """The notebook view: verdict, norm chart and the flagged labels' trigger images."""
        from neuralcleanse.io.notebook import scan_html

        return scan_html(self)

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of the norm per label (flagged in red, median and threshold lines).

        Args:
            ax: A matplotlib Axes to draw on (default: a new figure).

        Returns:
            The matplotlib Axes.

        Raises:
            InputError: When matplotlib is not installed.
        """
        from neuralcleanse.io.notebook import plot_norms

        return plot_norms(self, ax)

    def summary(self) -> str:
        """A short human-readable verdict (a second line names labels without clean images).

        It starts with the verdict word (BACKDOOR, SUSPICIOUS or CLEAN); a suspicious verdict
        names the labels that crossed the threshold in a single run only.
        """
        if self.flagged_labels:
            text = (f"BACKDOOR: label(s) {self.flagged_labels} flagged "
                    f"(anomaly index > {self.anomaly_threshold:g})")
        elif self.suspicious_labels:
            text = (f"SUSPICIOUS: no backdoor confirmed, but label(s) {self.suspicious_labels} "
                    f"crossed anomaly index {self.anomaly_threshold:g} in a single run and the "
                    "further runs did not confirm it")
        else:
            text = f"CLEAN: no backdoor found (no anomaly index > {self.anomaly_threshold:g})"
        if self.labels_without_data:
            text += (f"\nlabel(s) {self.labels_without_data} had no clean images: searched on "
                     "the other classes' images, left out of the median and MAD")
        return text


def _further_triggers(value: Any, labels: list[LabelResult], mitigable: list[int]
                      ) -> list[LabelResult]:
    """Read ``further_triggers``: whole label results of flagged or suspicious labels.

    Each must have its label's mask and pattern shapes, and a label has at most
    :data:`MAX_FURTHER_PER_LABEL` of them.
    """
    if not isinstance(value, list):
        raise InputError(f"further_triggers must be a list (got {json_kind(value)})")
    kept = {r.label: r for r in labels}
    out: list[LabelResult] = []
    counts: dict[int, int] = {}
    for i, entry in enumerate(value):
        try:
            r = LabelResult.from_dict(entry)
        except InputError as exc:
            raise InputError(f"further_triggers[{i}]: {exc}") from None
        if r.label not in mitigable:
            raise InputError(f"further_triggers[{i}] is of label {r.label}, which is neither "
                             "flagged nor suspicious")
        main = kept[r.label]
        if r.mask.shape != main.mask.shape or r.pattern.shape != main.pattern.shape:
            raise InputError(f"further_triggers[{i}] (label {r.label}) has another mask or "
                             "pattern shape than the label's kept trigger")
        counts[r.label] = counts.get(r.label, 0) + 1
        if counts[r.label] > MAX_FURTHER_PER_LABEL:
            raise InputError(f"further_triggers lists more than {MAX_FURTHER_PER_LABEL} "
                             f"triggers of label {r.label}")
        out.append(r)
    return out


def _restarts(value: Any, scanned: list[int]) -> dict[str, Any]:
    """Check the fields of ``restarts`` the reports read (empty: a single-seed scan)."""
    value = json_object(value, "restarts")
    if not value:
        return value
    n = json_integer(value.get("n"), "restarts.n", low=1)
    seeds, labels = value.get("seeds"), value.get("labels")
    counts, spread = value.get("flag_counts"), value.get("anomaly_index_spread")
    ok = (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)
          and isinstance(labels, list) and all(isinstance(t, int) for t in labels)
          and set(scanned) <= set(labels)
          and isinstance(counts, dict) and all(
              isinstance(counts.get(str(t)), int) and not isinstance(counts[str(t)], bool)
              and 0 <= counts[str(t)] <= n for t in scanned)
          and isinstance(spread, list) and len(spread) == len(labels)
          and all(v is None or is_finite_number(v) for v in spread))
    if not ok:
        raise InputError("restarts must hold n, seeds, labels (every scanned label), "
                         "flag_counts (0..n per label) and anomaly_index_spread (one number "
                         "per label)")
    return value


def _suspicious_labels(value: Any, scanned: list[int], flagged: list[int]) -> list[int]:
    """Check ``suspicious_labels``: scanned labels that are not flagged, each once."""
    if not isinstance(value, list):
        raise InputError(f"suspicious_labels must be a list (got {json_kind(value)})")
    labels = [json_integer(t, "suspicious_labels") for t in value]
    if len(set(labels)) != len(labels) or not set(labels) <= set(scanned) - set(flagged):
        raise InputError("suspicious_labels must list scanned labels that are not flagged, "
                         "each once")
    return labels


def _confirmation(value: Any, scanned: list[int]) -> dict[str, Any]:
    """Check the fields of ``confirmation`` that the reports read (empty: not recorded)."""
    value = json_object(value, "confirmation")
    rule = value.get("rule")
    if rule is not None and rule not in RULES:
        raise InputError(f"confirmation.rule must be one of {', '.join(map(repr, RULES))} "
                         f"(got {shown(rule)})")
    rate = value.get("expected_false_alarm_rate")
    if rate is not None and not (is_finite_number(rate) and 0 <= rate <= 1):
        raise InputError("confirmation.expected_false_alarm_rate must be a number in [0, 1] "
                         "or null")
    candidates = value.get("candidates", [])
    if not (isinstance(candidates, list) and all(
            type(t) is int and t in scanned for t in candidates)):
        raise InputError("confirmation.candidates must list scanned labels")
    runs = value.get("runs", {})
    if not (isinstance(runs, dict) and all(
            isinstance(k, str) and k.isdigit() and int(k) in scanned and isinstance(v, list)
            and all(n is None or is_finite_number(n) for n in v) for k, v in runs.items())):
        raise InputError("confirmation.runs must map scanned labels to lists of norms")
    first = json_object(value.get("first_run", {}), "confirmation.first_run")
    for key in ("norms", "anomaly_index"):
        values = first.get(key, [])
        if not (isinstance(values, list) and all(n is None or is_finite_number(n)
                                                 for n in values)):
            raise InputError(f"confirmation.first_run.{key} must be a list of numbers")
    flagged = first.get("flagged", [])
    if not (isinstance(flagged, list) and all(type(t) is int and t in scanned
                                              for t in flagged)):
        raise InputError("confirmation.first_run.flagged must list scanned labels")
    return value


def _labels_without_data(value: Any, scanned: list[int]) -> list[int]:
    """Check ``labels_without_data``: scanned labels, each once."""
    if not isinstance(value, list):
        raise InputError(f"labels_without_data must be a list (got {json_kind(value)})")
    labels = [json_integer(t, "labels_without_data") for t in value]
    if len(set(labels)) != len(labels) or not set(labels) <= set(scanned):
        raise InputError("labels_without_data must list scanned labels, each once")
    return sorted(labels)
