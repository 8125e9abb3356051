"""Typed results of a scan, serialisable to JSON and back."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .outliers import anomaly_indices

SCHEMA_VERSION = 1


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

    @property
    def trigger(self) -> np.ndarray:
        """The visible trigger ``mask * pattern`` in the input layout."""
        return _broadcast_mask(self.mask, self.pattern.shape) * self.pattern

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """Return a JSON-friendly dict; ``arrays=False`` leaves out mask and pattern."""
        out: dict[str, Any] = {
            "label": int(self.label),
            "norm": float(self.norm),
            "anomaly_index": float(self.anomaly_index),
            "attack_success_rate": float(self.attack_success_rate),
            "converged": bool(self.converged),
            "steps": int(self.steps),
            "seconds": float(self.seconds),
            "final_cost": float(self.final_cost),
        }
        if arrays:
            out["mask_shape"] = list(self.mask.shape)
            out["pattern_shape"] = list(self.pattern.shape)
            out["mask"] = self.mask.astype(np.float32).ravel().tolist()
            out["pattern"] = self.pattern.astype(np.float32).ravel().tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelResult:
        """Inverse of :meth:`to_dict` (with arrays)."""
        mask = np.asarray(data["mask"], dtype=np.float32).reshape(data["mask_shape"])
        pattern = np.asarray(data["pattern"], dtype=np.float32).reshape(data["pattern_shape"])
        return cls(label=int(data["label"]), mask=mask, pattern=pattern,
                   norm=float(data["norm"]), attack_success_rate=float(data["attack_success_rate"]),
                   converged=bool(data["converged"]), steps=int(data["steps"]),
                   seconds=float(data["seconds"]), final_cost=float(data["final_cost"]),
                   anomaly_index=float(data.get("anomaly_index", 0.0)))


def _broadcast_mask(mask: np.ndarray, pattern_shape: tuple[int, ...]) -> np.ndarray:
    """Reshape an ``(H, W)`` mask so that it broadcasts against one input of the model."""
    if len(pattern_shape) == 2:
        return mask
    if pattern_shape[-2:] == mask.shape:  # channels first
        return mask[None, :, :]
    return mask[:, :, None]


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
        config: The search settings used (see :class:`~neuralcleanse.config.ScanConfig`).
        model_info: Framework, input shape, layout, value range, preprocessing, output kind.
        data_info: Number of clean images and per-class counts.
        versions: Package and framework versions.
        wall_seconds: Total wall time of the scan.
        partial: True when not every requested label was searched (an interrupted scan).
        restarts: Per-restart details when the scan ran several seeds (empty otherwise).
        labels_without_data: Scanned labels that had no clean images. Their triggers were
            searched on the images of the other classes and they can be flagged, but the
            median and MAD are computed without them (empty for reports written before).
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
    schema_version: int = SCHEMA_VERSION

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
            **info: The other fields of :class:`ScanResult`.
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
            "median_norm": _finite_or_none(self.median_norm),
            "mad": _finite_or_none(self.mad),
            "anomaly_threshold": float(self.anomaly_threshold),
            "partial": bool(self.partial),
            "wall_seconds": float(self.wall_seconds),
            "config": self.config,
            "model_info": self.model_info,
            "data_info": self.data_info,
            "versions": self.versions,
            "restarts": self.restarts,
            "labels_without_data": [int(t) for t in self.labels_without_data],
            "labels": [r.to_dict(arrays=arrays) for r in self.labels],
        }

    def to_json(self, path: str | Path | None = None, arrays: bool = True) -> str:
        """Serialise to JSON; also write it to ``path`` when one is given."""
        text = json.dumps(self.to_dict(arrays=arrays), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanResult:
        """Inverse of :meth:`to_dict`."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"unsupported report schema_version {version!r} "
                             f"(this neuralcleanse reads version {SCHEMA_VERSION})")
        return cls(labels=[LabelResult.from_dict(d) for d in data["labels"]],
                   nb_classes=int(data["nb_classes"]),
                   flagged_labels=[int(t) for t in data["flagged_labels"]],
                   median_norm=_none_to_nan(data["median_norm"]),
                   mad=_none_to_nan(data["mad"]),
                   anomaly_threshold=float(data["anomaly_threshold"]),
                   config=data["config"], model_info=data.get("model_info", {}),
                   data_info=data.get("data_info", {}), versions=data.get("versions", {}),
                   wall_seconds=float(data.get("wall_seconds", 0.0)),
                   partial=bool(data.get("partial", False)),
                   restarts=data.get("restarts", {}),
                   labels_without_data=[int(t) for t in data.get("labels_without_data", [])])

    @classmethod
    def from_json(cls, source: str | Path) -> ScanResult:
        """Read a result from a JSON string or a path to a JSON file."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """A short human-readable verdict (a second line names labels without clean images)."""
        if self.flagged_labels:
            text = (f"BACKDOOR suspected: label(s) {self.flagged_labels} flagged "
                    f"(anomaly index > {self.anomaly_threshold:g})")
        else:
            text = f"no backdoor found (no anomaly index > {self.anomaly_threshold:g})"
        if self.labels_without_data:
            text += (f"\nlabel(s) {self.labels_without_data} had no clean images: searched on "
                     "the other classes' images, left out of the median and MAD")
        return text


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
