"""Typed results of a scan, serialisable to JSON and back."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError
from neuralcleanse.core.layout import mask_for_layout
from neuralcleanse.core.outliers import anomaly_indices

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
        shape = tuple(self.pattern.shape)
        channels_first = len(shape) == 3 and shape[-2:] == tuple(self.mask.shape)
        return mask_for_layout(self.mask, shape, channels_first) * self.pattern

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """Return a JSON-friendly dict; ``arrays=False`` leaves out mask and pattern."""
        out: dict[str, Any] = {
            "label": int(self.label),
            "norm": _finite_or_none(self.norm),
            "anomaly_index": _finite_or_none(self.anomaly_index),
            "attack_success_rate": _finite_or_none(self.attack_success_rate),
            "converged": bool(self.converged),
            "steps": int(self.steps),
            "seconds": _finite_or_none(self.seconds),
            "final_cost": _finite_or_none(self.final_cost),
        }
        if arrays:
            out["mask_shape"] = list(self.mask.shape)
            out["pattern_shape"] = list(self.pattern.shape)
            out["mask"] = _finite_list(self.mask)
            out["pattern"] = _finite_list(self.pattern)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelResult:
        """Inverse of :meth:`to_dict` (with arrays); ``null`` numbers are read as NaN.

        Raises:
            InputError: When a field is missing or has the wrong type or shape.
        """
        data = _table(data, "a label result")
        mask_shape = _shape(_get(data, "mask_shape"), "mask_shape", (2,))
        pattern_shape = _shape(_get(data, "pattern_shape"), "pattern_shape", (2, 3))
        if not (pattern_shape == mask_shape or pattern_shape[-2:] == mask_shape
                or pattern_shape[:2] == mask_shape):
            raise InputError(f"pattern_shape {list(pattern_shape)} does not fit mask_shape "
                             f"{list(mask_shape)}")
        return cls(label=_integer(_get(data, "label"), "label"),
                   mask=_array(_get(data, "mask"), mask_shape, "mask"),
                   pattern=_array(_get(data, "pattern"), pattern_shape, "pattern"),
                   norm=_number(_get(data, "norm"), "norm"),
                   attack_success_rate=_number(_get(data, "attack_success_rate"),
                                               "attack_success_rate"),
                   converged=_boolean(_get(data, "converged"), "converged"),
                   steps=_integer(_get(data, "steps"), "steps"),
                   seconds=_number(_get(data, "seconds"), "seconds"),
                   final_cost=_number(_get(data, "final_cost"), "final_cost"),
                   anomaly_index=_number(data.get("anomaly_index", 0.0), "anomaly_index"))


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
            "anomaly_threshold": _finite_or_none(self.anomaly_threshold),
            "partial": bool(self.partial),
            "wall_seconds": _finite_or_none(self.wall_seconds),
            "config": json_safe(self.config),
            "model_info": json_safe(self.model_info),
            "data_info": json_safe(self.data_info),
            "versions": json_safe(self.versions),
            "restarts": json_safe(self.restarts),
            "labels_without_data": [int(t) for t in self.labels_without_data],
            "labels": [r.to_dict(arrays=arrays) for r in self.labels],
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
        data = _table(data, "a scan report")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:  # not true, not 1.0
            raise InputError(f"unsupported report schema_version {_shown(version)} "
                             f"(this neuralcleanse reads version {SCHEMA_VERSION})")
        nb_classes = _integer(_get(data, "nb_classes"), "nb_classes", low=1, high=MAX_CLASSES)
        entries = _get(data, "labels")
        if not isinstance(entries, list):
            raise InputError(f"labels must be a list (got {_kind(entries)})")
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
        flagged = _get(data, "flagged_labels")
        if not isinstance(flagged, list):
            raise InputError(f"flagged_labels must be a list (got {_kind(flagged)})")
        flagged = [_integer(t, "flagged_labels") for t in flagged]
        if not set(flagged) <= set(scanned):
            raise InputError(f"flagged_labels {sorted(set(flagged) - set(scanned))[:5]} "
                             "were not scanned")
        model_info = _table(data.get("model_info", {}), "model_info")
        clip = model_info.get("clip_values")
        if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(
                _is_finite_number(v) for v in clip)):
            raise InputError("model_info.clip_values must be two finite numbers or null")
        data_info = _table(data.get("data_info", {}), "data_info")
        counts = data_info.get("class_counts")
        if counts is not None and not (isinstance(counts, list) and all(
                _is_finite_number(n) for n in counts)):
            raise InputError("data_info.class_counts must be a list of numbers")
        return cls(labels=labels, nb_classes=nb_classes, flagged_labels=flagged,
                   median_norm=_number(_get(data, "median_norm"), "median_norm"),
                   mad=_number(_get(data, "mad"), "mad"),
                   anomaly_threshold=_number(_get(data, "anomaly_threshold"),
                                             "anomaly_threshold"),
                   config=_table(_get(data, "config"), "config"), model_info=model_info,
                   data_info=data_info,
                   versions=_table(data.get("versions", {}), "versions"),
                   wall_seconds=_number(data.get("wall_seconds", 0.0), "wall_seconds"),
                   partial=_boolean(data.get("partial", False), "partial"),
                   restarts=_restarts(data.get("restarts", {}), scanned),
                   labels_without_data=_labels_without_data(
                       data.get("labels_without_data", []), scanned))

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


# -- JSON: written strictly (no NaN/Infinity), read defensively (untrusted files) --------------
#: Largest JSON file :func:`read_json_file` reads (a report of 1000 labels of 224x224x3 is
#: about 2 GB; anything larger is not a report).
MAX_JSON_BYTES = 4 * 2**30
#: Most outputs a model in a report may have.
MAX_CLASSES = 1_000_000


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and non-finite floats made ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite_or_none(float(value))
    return value


def dumps(data: Any, indent: int | None = 1) -> str:
    """JSON text of ``data`` with non-finite numbers as ``null``; never writes NaN/Infinity."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def loads(text: str, what: str) -> Any:
    """Parse JSON text; ``NaN``/``Infinity`` become ``None``; errors are one-line InputErrors.

    ``what`` names the source in the message (e.g. the file).
    """
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # integers of > 4300 digits, deep nesting
        name = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{what} is not usable JSON: {name}") from None


def read_json_file(path: str | Path) -> Any:
    """Read and parse a JSON file (UTF-8); a one-line InputError names the file on bad content.

    Raises:
        InputError: When the file is not a regular file, too large, not UTF-8 or not JSON.
        OSError: When it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{str(path)!r} is larger than {MAX_JSON_BYTES // 2**30} GiB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{str(path)!r} is not UTF-8 text") from None
    return loads(text, repr(str(path)))


def _finite_list(array: np.ndarray) -> list[Any]:
    values = np.asarray(array, dtype=np.float32).ravel()
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    return [float(v) if ok else None for v, ok in zip(values.tolist(), finite.tolist())]


def _shown(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a JSON object (got {_kind(value)})")
    return value


def _get(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise InputError(f"the field {key!r} is missing")
    return data[key]


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _integer(value: Any, name: str, low: int = 0, high: int = 2**31 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}] (got {_shown(value)})")
    return value


def _number(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number or null (got {_kind(value)})")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false (got {_kind(value)})")
    return value


def _shape(value: Any, name: str, ndims: tuple[int, ...]) -> tuple[int, ...]:
    ok = isinstance(value, list) and len(value) in ndims and all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8192 for n in value)
    if not ok:
        raise InputError(f"{name} must be {' or '.join(map(str, ndims))} integers in "
                         f"[1, 8192] (got {_shown(value)})")
    return tuple(value)


def _array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    size = math.prod(shape)
    if not isinstance(value, list) or len(value) != size:
        got = f"{len(value)} values" if isinstance(value, list) else _kind(value)
        raise InputError(f"{name} must be a list of {size} numbers (got {got})")
    if not all(v is None or _is_finite_number(v) for v in value):
        raise InputError(f"{name} must hold only numbers or null")
    return np.asarray([math.nan if v is None else v for v in value],
                      dtype=np.float32).reshape(shape)


def _restarts(value: Any, scanned: list[int]) -> dict[str, Any]:
    """Check the fields of ``restarts`` the reports read (empty: a single-seed scan)."""
    value = _table(value, "restarts")
    if not value:
        return value
    n = _integer(value.get("n"), "restarts.n", low=1)
    seeds, labels = value.get("seeds"), value.get("labels")
    counts, spread = value.get("flag_counts"), value.get("anomaly_index_spread")
    ok = (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)
          and isinstance(labels, list) and all(isinstance(t, int) for t in labels)
          and set(scanned) <= set(labels)
          and isinstance(counts, dict) and all(
              isinstance(counts.get(str(t)), int) and not isinstance(counts[str(t)], bool)
              and 0 <= counts[str(t)] <= n for t in scanned)
          and isinstance(spread, list) and len(spread) == len(labels)
          and all(v is None or _is_finite_number(v) for v in spread))
    if not ok:
        raise InputError("restarts must hold n, seeds, labels (every scanned label), "
                         "flag_counts (0..n per label) and anomaly_index_spread (one number "
                         "per label)")
    return value


def _labels_without_data(value: Any, scanned: list[int]) -> list[int]:
    """Check ``labels_without_data``: scanned labels, each once."""
    if not isinstance(value, list):
        raise InputError(f"labels_without_data must be a list (got {_kind(value)})")
    labels = [_integer(t, "labels_without_data") for t in value]
    if len(set(labels)) != len(labels) or not set(labels) <= set(scanned):
        raise InputError("labels_without_data must list scanned labels, each once")
    return sorted(labels)
