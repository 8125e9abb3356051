"""Input-filter files: an :class:`~neuralcleanse.mitigation.InputFilter` saved as small JSON.

:func:`write_filter` (what ``InputFilter.save`` calls) writes strict JSON (no NaN or Infinity): the
format name and schema version, the watched layer, each flagged label's neurons with their weights
and the centre and spread of their clean score, how the score was made (``score``), the threshold,
the target and measured rates, and the model facts the filter depends on (the input shape, layout,
value range, output kind and preprocessing as the classifier's ``describe()`` gives them, and the
model file's SHA-256 when known). The model itself is never stored.

:func:`read_filter_file` reads such a file as untrusted input: JSON only (nothing is run or
unpickled), at most :data:`MAX_FILTER_BYTES`, every field type- and range-checked and any
unknown field refused; a fault is a one-line :class:`~neuralcleanse.core.errors.LoadError`
naming the file and the field. :func:`~neuralcleanse.io.filter_loading.load_filter` then checks
the file against a model and returns a working filter.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse import __version__
from neuralcleanse.backends.base import Classifier
from neuralcleanse.backends.differentiable import split_preprocessing
from neuralcleanse.core.checks import MAX_INPUT_VALUE, check_clip_values
from neuralcleanse.core.errors import InputError, InputTypeError, LoadError, one_line
from neuralcleanse.core.strict_json import (
    dumps,
    is_finite_number,
    json_boolean,
    json_integer,
    json_kind,
    json_object,
    json_shape,
    required,
    shown,
)
from neuralcleanse.mitigation.filtering import SCORES, InputFilter

#: The ``format`` field of every filter file.
FILTER_FORMAT = "neuralcleanse-input-filter"
#: The layout version written; files of a later version are refused with advice to upgrade.
#: Version 2 added each label's ``weights`` (a version-1 file, without them, weighs its
#: neurons equally, as the filters of that time did) and the top-level ``score``; version 3
#: the ``fpr_confidence`` the threshold holds ``target_fpr`` with (earlier files: unknown).
FILTER_SCHEMA_VERSION = 3
#: The file name a filter gets in a mitigation's output folder.
FILTER_JSON = "filter.json"
#: Largest filter file read. A Fisher filter of 43 labels x 2,048 weighted neurons, with a
#: per-pixel preprocessing of a 224x224x3 input, is a few MB.
MAX_FILTER_BYTES = 32 * 2**20
#: Longest text field (a layer name, the model class, the version).
MAX_TEXT = 1000
#: Most classes a filter's model may have.
MAX_CLASSES = 1_000_000
#: Most values in one input (the input shape's product).
MAX_INPUT_VALUES = 2**26
#: Smallest spread accepted (float32's smallest normal number): a smaller one overflows scores.
MIN_SCALE = float(np.finfo(np.float32).tiny)

_TOP_REQUIRED = ("format", "schema_version", "layer", "n_neurons", "labels", "threshold",
                 "model")
#: What a filter file records about its fitting besides the filter itself.
FITTING_FIELDS = ("target_fpr", "fpr_confidence", "false_positive_rate", "detection_rate",
                  "top_fraction", "score")
_TOP_OPTIONAL = ("neuralcleanse_version", "layer_name", *FITTING_FIELDS)
_MODEL_REQUIRED = ("input_shape", "nb_classes", "channels_first", "clip_values", "output")
_MODEL_OPTIONAL = ("framework", "model_class", "preprocessing", "file_sha256")
_LABEL_FIELDS = ("label", "neurons", "center", "scale")
_LABEL_OPTIONAL = ("weights",)
#: Largest absolute weight accepted (a weight is a fitted, finite coefficient).
MAX_WEIGHT = 1e30
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class FilterFile:
    """A filter file's content, checked on its own (not yet against a model).

    Attributes:
        path: The file read.
        layer: The watched layer: a name, an index, or ``None`` for the input of the final
            classification layer.
        layer_name: The name of the layer the filter was fitted on (``None`` for the input of
            the final classification layer); an index must still point at it.
        n_neurons: Neurons in that layer when the filter was fitted.
        neurons: Trigger neurons per flagged label.
        weights: Their weights in the label's score, for the labels the file gives them for
            (a version-1 file gives none: :class:`InputFilter` then weighs them equally).
        center: Mean clean score per flagged label.
        scale: Spread of the clean score per flagged label.
        threshold: Score above which an input is refused.
        target_fpr: The false-positive rate the threshold was chosen for (``None``: unknown).
        fpr_confidence: The probability with which the threshold holds ``target_fpr`` on new
            clean inputs (``None``: unknown; files before version 3 aimed at it on average).
        false_positive_rate: Measured on held-out clean inputs (``None``: unknown).
        detection_rate: Measured on held-out stamped inputs (``None``: unknown).
        top_fraction: Share of the layer's neurons kept per label (``None``: unknown).
        score: How the neurons made the score, ``"fisher"`` or ``"mean"`` (``None``: unknown).
        model: The model facts: ``input_shape`` (tuple), ``nb_classes``, ``channels_first``,
            ``clip_values`` (tuple), ``output``, ``preprocessing`` (``None``, ``[sub, div]`` or
            the name of a function), ``framework``, ``model_class`` and ``file_sha256``.
    """

    path: Path
    layer: str | int | None
    layer_name: str | None
    n_neurons: int
    neurons: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]
    center: dict[int, float]
    scale: dict[int, float]
    threshold: float
    target_fpr: float | None
    fpr_confidence: float | None
    false_positive_rate: float | None
    detection_rate: float | None
    top_fraction: float | None
    score: str | None
    model: dict[str, Any]

    @property
    def where(self) -> str:
        """The file, quoted, as messages name it."""
        return f"filter file {str(self.path)!r}"

    def model_defaults(self) -> dict[str, Any]:
        """The model facts spelled as a scan report's ``model_info`` (for defaults)."""
        out = {"channels_first": self.model["channels_first"],
               "clip_values": list(self.model["clip_values"]), "output": self.model["output"]}
        if isinstance(self.model.get("preprocessing"), list):
            out["preprocessing"] = self.model["preprocessing"]
        return out


# -- writing ---------------------------------------------------------------------------------
def _layer_fields(filt: InputFilter) -> tuple[str | int, str | None]:
    """The ``layer`` and ``layer_name`` fields of a filter."""
    layer = filt.layer
    if layer is None or layer == Classifier.FINAL_LAYER_INPUT:
        return Classifier.FINAL_LAYER_INPUT, None
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        return int(layer), filt.classifier.layer_spec_name(int(layer))
    return str(layer), str(layer)


def _checked_sha256(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InputError(f"{name} must be a SHA-256 of 64 hex digits (got {shown(value)})")
    return value.lower()


def filter_document(filt: InputFilter, model_sha256: str | None = None) -> dict[str, Any]:
    """The JSON document of a filter (see the module's description).

    Raises:
        InputError: When the filter's threshold, centres or spreads are not finite (it was not
            fitted) or ``model_sha256`` is not 64 hex digits.
    """
    if not isinstance(filt, InputFilter):
        raise InputTypeError(f"expected an InputFilter (got {type(filt).__name__})")
    numbers = [filt.threshold, *filt.center.values(), *filt.scale.values()]
    if not all(math.isfinite(v) for v in numbers) or not filt.neurons:
        raise InputError("the filter has no finite threshold, centres and spreads or no label: "
                         "only a filter fitted by filter_inputs (or mitigate) can be saved")
    info = filt.file_info
    sha = model_sha256 if model_sha256 is not None else info.get("model_sha256")
    if sha is not None:
        sha = _checked_sha256(sha, "model_sha256")
    report = filt.report
    if report is not None:
        n_neurons = int(report.n_neurons)
        rates: dict[str, Any] = {
            "target_fpr": report.target_fpr,
            "fpr_confidence": report.options.get("fpr_confidence"),
            "false_positive_rate": report.false_positive_rate,
            "detection_rate": report.detection_rate,
            "top_fraction": report.options.get("top_fraction"),
            "score": report.options.get("score")}
    else:
        n_neurons = info.get("n_neurons") or probe_neurons(filt.classifier, filt.layer)
        rates = {k: info.get(k) for k in FITTING_FIELDS}
    layer, layer_name = _layer_fields(filt)
    described = filt.classifier.describe()
    model = {key: described.get(key) for key in
             ("framework", "model_class", "input_shape", "nb_classes", "channels_first",
              "clip_values", "output", "preprocessing")}
    model["file_sha256"] = sha
    return {
        "format": FILTER_FORMAT, "schema_version": FILTER_SCHEMA_VERSION,
        "neuralcleanse_version": __version__, "layer": layer, "layer_name": layer_name,
        "n_neurons": n_neurons,
        "labels": [{"label": int(label), "neurons": [int(n) for n in idx],
                    "weights": [float(v) for v in filt.weights[label]],
                    "center": float(filt.center[label]), "scale": float(filt.scale[label])}
                   for label, idx in filt.neurons.items()],
        "threshold": float(filt.threshold), **rates, "model": model,
    }


def write_filter(filt: InputFilter, path: str | Path, model_sha256: str | None = None) -> Path:
    """Write ``filt`` to ``path`` as JSON (through a temporary file renamed over ``path``).

    The document is read back with the same checks as :func:`read_filter_file` before it is
    written, so a file this writes always loads.

    Returns:
        The path written.

    Raises:
        InputError: See :func:`filter_document`.
        OSError: When the file cannot be written (e.g. its folder does not exist).
    """
    from neuralcleanse.io.report import atomic_write

    target = checked_path(path, "path")
    text = dumps(filter_document(filt, model_sha256)) + "\n"
    _parse_document(json.loads(text), target)  # what is written must load
    atomic_write(target, text)
    return target


# -- reading ---------------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise InputError(f"holds {name}, which strict JSON has no place for (a number must be "
                     "finite)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InputError(f"names the field {shown(key)} twice")
        out[key] = value
    return out


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant,
                          object_pairs_hook=_no_duplicates)
    except InputError as exc:
        raise LoadError(f"{where} {exc}") from None
    except json.JSONDecodeError as exc:
        raise LoadError(f"{where} is not valid JSON (truncated or damaged?): {exc}") from None
    except (ValueError, RecursionError) as exc:  # > 4300-digit integers, deep nesting
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else \
            "it holds a number too long to read"
        raise LoadError(f"{where} is not usable JSON: {why}") from None


def read_filter_file(path: str | Path) -> FilterFile:
    """Read and check a filter file on its own (see the module's description).

    Raises:
        LoadError: On a missing file, a file that is not a regular file, larger than
            :data:`MAX_FILTER_BYTES`, not UTF-8 JSON, not a filter file, of a later schema
            version, or with any field missing, unknown, of the wrong type or out of range;
            the message names the file and the field.
    """
    p = checked_path(path, "path")
    where = f"filter file {str(p)!r}"
    if not p.exists():
        raise LoadError(f"{where} does not exist")
    if not p.is_file():
        raise LoadError(f"{where} is not a regular file")
    limit = f"{MAX_FILTER_BYTES // 2**20} MiB"
    if p.stat().st_size > MAX_FILTER_BYTES:
        raise LoadError(f"{where} is larger than {limit}, far more than a filter takes: it is "
                        "not a filter file")
    with p.open("rb") as handle:
        data = handle.read(MAX_FILTER_BYTES + 1)
    if len(data) > MAX_FILTER_BYTES:  # it grew after the size was read
        raise LoadError(f"{where} is larger than {limit}: it is not a filter file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LoadError(f"{where} is not UTF-8 text: it is not a filter file") from None
    document = _parse_json(text, where)
    try:
        return _parse_document(document, p)
    except InputError as exc:
        raise LoadError(f"{where}: {one_line(exc)}") from None


def checked_path(value: Any, name: str) -> Path:
    """``value`` as a :class:`Path`; a value that is not a path is refused naming ``name``."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputTypeError(f"{name} must be a file path (got {type(value).__name__})")
    return Path(value)


def _field(name: str) -> str:
    return f"field {name!r}"


def _number(value: Any, name: str, low: float = -MAX_INPUT_VALUE,
            high: float = MAX_INPUT_VALUE, *, open_low: bool = False, open_high: bool = False,
            nullable: bool = False) -> float | None:
    """A finite number in a range (``null`` allowed when ``nullable``)."""
    if value is None and nullable:
        return None
    ok = is_finite_number(value) and (low < value if open_low else low <= value) and \
        (value < high if open_high else value <= high)
    if not ok:
        span = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        kind = "a finite number" + (" or null" if nullable else "")
        raise InputError(f"{_field(name)} must be {kind} in {span} (got {shown(value)})")
    return float(value)


def _text(value: Any, name: str, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise InputError(f"{_field(name)} must be a string of 1 to {MAX_TEXT} characters"
                         f"{' or null' if nullable else ''} (got {shown(value)})")
    return value


def _fields(data: Any, name: str, needed: tuple[str, ...], optional: tuple[str, ...]
            ) -> dict[str, Any]:
    """``data`` as an object with all of ``needed``, some of ``optional`` and nothing else."""
    data = json_object(data, _field(name) if name else "the document")
    unknown = sorted(set(data) - set(needed) - set(optional))
    if unknown:
        where = f"in {_field(name)}" if name else "at the top level"
        listed = ", ".join(shown(k) for k in unknown[:5])
        raise InputError(f"unknown field(s) {listed} {where}; a filter file holds only "
                         f"{', '.join(needed + optional)} there")
    for key in needed:
        if key not in data:
            raise InputError(f"{_field(f'{name}.{key}' if name else key)} is missing")
    return data


def _parse_document(document: Any, path: Path) -> FilterFile:
    """Check every field of a parsed filter document; InputErrors name the field."""
    document = json_object(document, "the document")
    fmt = document.get("format")
    if fmt != FILTER_FORMAT:
        raise InputError(f"{_field('format')} must be {FILTER_FORMAT!r} (got {shown(fmt)}): "
                         "this is not an input filter file")
    version = json_integer(required(document, "schema_version"), _field("schema_version"),
                           1, 10**6)
    if version > FILTER_SCHEMA_VERSION:
        raise InputError(f"{_field('schema_version')} is {version}: the file was written by a "
                         f"newer neuralcleanse (this one reads version {FILTER_SCHEMA_VERSION}); "
                         "upgrade neuralcleanse")
    document = _fields(document, "", _TOP_REQUIRED, _TOP_OPTIONAL)
    _text(document.get("neuralcleanse_version"), "neuralcleanse_version")
    model = _parse_model(document["model"])
    layer = document["layer"]
    if isinstance(layer, int) and not isinstance(layer, bool):
        json_integer(layer, _field("layer"), -(2**31), 2**31 - 1)
    else:
        _text(layer, "layer", nullable=False)
    layer_name = _text(document.get("layer_name"), "layer_name")
    n_neurons = json_integer(document["n_neurons"], _field("n_neurons"), 1, 2**31 - 1)
    neurons, weights, center, scale = _parse_labels(document["labels"], n_neurons,
                                                    model["nb_classes"])
    score = document.get("score")
    if score is not None and score not in SCORES:
        raise InputError(f"{_field('score')} must be one of {', '.join(map(repr, SCORES))} or "
                         f"null (got {shown(score)})")
    threshold = _number(document["threshold"], "threshold")
    return FilterFile(
        path=path, layer=None if layer == Classifier.FINAL_LAYER_INPUT else layer,
        layer_name=layer_name, n_neurons=n_neurons, neurons=neurons, weights=weights,
        center=center,
        scale=scale, threshold=float(threshold),  # type: ignore[arg-type]
        target_fpr=_number(document.get("target_fpr"), "target_fpr", 0.0, 1.0, open_low=True,
                           open_high=True, nullable=True),
        fpr_confidence=_number(document.get("fpr_confidence"), "fpr_confidence", 0.0, 1.0,
                               open_low=True, open_high=True, nullable=True),
        false_positive_rate=_number(document.get("false_positive_rate"), "false_positive_rate",
                                    0.0, 1.0, nullable=True),
        detection_rate=_number(document.get("detection_rate"), "detection_rate", 0.0, 1.0,
                               nullable=True),
        top_fraction=_number(document.get("top_fraction"), "top_fraction", 0.0, 1.0,
                             open_low=True, nullable=True),
        score=score, model=model)


def _parse_labels(value: Any, n_neurons: int, nb_classes: int
                  ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, float],
                             dict[int, float]]:
    if not isinstance(value, list) or not 1 <= len(value) <= nb_classes:
        raise InputError(f"{_field('labels')} must be a list of 1 to {nb_classes} label "
                         f"entries, one per flagged label (got {json_kind(value)}"
                         f"{f' of {len(value)}' if isinstance(value, list) else ''})")
    neurons: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray] = {}
    center: dict[int, float] = {}
    scale: dict[int, float] = {}
    for i, entry in enumerate(value):
        name = f"labels[{i}]"
        entry = _fields(entry, name, _LABEL_FIELDS, _LABEL_OPTIONAL)
        label = json_integer(entry["label"], _field(f"{name}.label"), 0, nb_classes - 1)
        if label in neurons:
            raise InputError(f"{_field(f'{name}.label')} repeats label {label}")
        neurons[label] = _neuron_list(entry["neurons"], f"{name}.neurons", n_neurons)
        if "weights" in entry:  # a version-1 file has none: the filter weighs equally
            weights[label] = _weight_list(entry["weights"], f"{name}.weights",
                                          len(neurons[label]))
        center[label] = float(_number(entry["center"], f"{name}.center"))  # type: ignore[arg-type]
        scale[label] = float(_number(entry["scale"], f"{name}.scale",  # type: ignore[arg-type]
                                     MIN_SCALE, MAX_INPUT_VALUE))
    return neurons, weights, center, scale


def _weight_list(value: Any, name: str, n: int) -> np.ndarray:
    """One finite weight per neuron."""
    if not isinstance(value, list) or len(value) != n:
        raise InputError(f"{_field(name)} must be a list of {n} numbers, one per neuron (got "
                         f"{json_kind(value)}"
                         f"{f' of {len(value)}' if isinstance(value, list) else ''})")
    for v in value:
        if not is_finite_number(v) or abs(v) > MAX_WEIGHT:
            raise InputError(f"{_field(name)} holds {shown(v)}, not a finite number in "
                             f"[-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    return np.asarray(value, dtype=np.float64)


def _neuron_list(value: Any, name: str, n_neurons: int) -> np.ndarray:
    if not isinstance(value, list) or not 1 <= len(value) <= n_neurons:
        raise InputError(f"{_field(name)} must be a list of 1 to n_neurons ({n_neurons}) "
                         f"neuron indices (got {json_kind(value)}"
                         f"{f' of {len(value)}' if isinstance(value, list) else ''})")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < n_neurons:
            raise InputError(f"{_field(name)} holds {shown(n)}, not a neuron index in "
                             f"[0, {n_neurons - 1}] (the layer has n_neurons = {n_neurons})")
    if len(set(value)) != len(value):
        raise InputError(f"{_field(name)} names a neuron more than once")
    return np.asarray(value, dtype=np.int64)


def _parse_model(value: Any) -> dict[str, Any]:
    data = _fields(value, "model", _MODEL_REQUIRED, _MODEL_OPTIONAL)
    shape = json_shape(data["input_shape"], _field("model.input_shape"), (2, 3))
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise InputError(f"{_field('model.input_shape')} {list(shape)} has more than "
                         f"{MAX_INPUT_VALUES} values per input")
    clip = data["clip_values"]
    if not isinstance(clip, list) or len(clip) != 2 or not all(map(is_finite_number, clip)):
        raise InputError(f"{_field('model.clip_values')} must be two finite numbers [min, max] "
                         f"(got {shown(clip)})")
    try:
        clip_values = check_clip_values(tuple(clip))
    except InputError as exc:
        raise InputError(f"{_field('model.clip_values')}: {one_line(exc)}") from None
    output = data["output"]
    if output not in ("logits", "probabilities"):
        raise InputError(f"{_field('model.output')} must be 'logits' or 'probabilities' (got "
                         f"{shown(output)})")
    sha = data.get("file_sha256")
    return {
        "framework": _text(data.get("framework"), "model.framework"),
        "model_class": _text(data.get("model_class"), "model.model_class"),
        "input_shape": shape,
        "nb_classes": json_integer(data["nb_classes"], _field("model.nb_classes"), 2,
                                   MAX_CLASSES),
        "channels_first": json_boolean(data["channels_first"], _field("model.channels_first")),
        "clip_values": clip_values, "output": output,
        "preprocessing": _parse_preprocessing(data.get("preprocessing"), shape),
        "file_sha256": None if sha is None else _checked_sha256(sha,
                                                                _field("model.file_sha256")),
    }


def _numbers(value: Any, name: str, depth: int = 0) -> None:
    """Refuse anything but a finite number or (nested up to 3 deep) lists of them."""
    if is_finite_number(value) and abs(value) <= MAX_INPUT_VALUE:
        return
    if isinstance(value, list) and depth < 3 and value:
        for item in value:
            _numbers(item, name, depth + 1)
        return
    raise InputError(f"{_field(name)} must be numbers within +-{MAX_INPUT_VALUE:g}: one, or a "
                     f"list (per channel or per pixel) (found {shown(value)})")


def _parse_preprocessing(value: Any, shape: tuple[int, ...]) -> Any:
    name = "model.preprocessing"
    if value is None or isinstance(value, str):
        return _text(value, name)
    if not isinstance(value, list) or len(value) != 2:
        raise InputError(f"{_field(name)} must be null, the name of a function, or "
                         f"[subtrahend, divisor] (got {json_kind(value)})")
    _numbers(value[0], f"{name}[0]")
    _numbers(value[1], f"{name}[1]")
    try:
        split_preprocessing((value[0], value[1]), shape)
    except InputError as exc:
        raise InputError(f"{_field(name)}: {one_line(exc)}") from None
    return value


def probe_neurons(clf: Classifier, layer: str | int | None, where: str | None = None) -> int:
    """Neurons of ``layer``, from one forward pass of an input in the middle of the range."""
    lo, hi = clf.clip_values
    probe = np.full((1, *clf.input_shape), (lo + hi) / 2, dtype=np.float32)
    shown_layer = Classifier.FINAL_LAYER_INPUT if layer is None else layer
    try:
        acts = clf.neuron_activations(probe, layer, batch_size=1)
    except InputError as exc:
        if where is None:
            raise
        raise LoadError(f"{where}: field 'layer' ({shown(shown_layer)}) does not fit the "
                        f"model: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the model could not run the layer on the probe
        if where is None:
            raise
        raise LoadError(f"{where}: the model could not compute layer {shown(shown_layer)} "
                        f"on an input of shape {tuple(clf.input_shape)} "
                        f"({type(exc).__name__}: {one_line(exc)})") from None
    return int(np.asarray(acts).shape[1])
