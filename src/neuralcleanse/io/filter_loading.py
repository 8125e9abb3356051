"""Loading an input-filter file against a model: :func:`load_filter`.

The file is read by :func:`~neuralcleanse.io.filter_files.read_filter_file` (untrusted input:
JSON only, every field checked). This module binds it to a model: it wraps the model with the
layout, value range, output kind and preprocessing the file records (refusing options that
contradict them), checks the input shape, the number of outputs, the layer and its number of
neurons, and, when the model file's path is given, the SHA-256 the file records, and returns a
working :class:`~neuralcleanse.mitigation.InputFilter`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.backends import wrap_model
from neuralcleanse.backends.base import Classifier, Preprocessing
from neuralcleanse.backends.differentiable import split_preprocessing
from neuralcleanse.core.checks import check_clip_values
from neuralcleanse.core.errors import InputError, InputTypeError, LoadError, one_line
from neuralcleanse.core.strict_json import shown
from neuralcleanse.io.filter_files import (
    FITTING_FIELDS,
    FilterFile,
    checked_path,
    probe_neurons,
    read_filter_file,
)
from neuralcleanse.mitigation.filtering import InputFilter


def load_filter(path: str | Path, model: Any, *, model_path: str | Path | None = None,
                ignore_sha256: bool = False, output: str | None = None,
                channels_first: bool | None = None,
                clip_values: tuple[float, float] | None = None,
                preprocessing: Preprocessing = None, device: Any = None) -> InputFilter:
    """Load an input filter saved with :meth:`InputFilter.save` and attach it to ``model``.

    The file is untrusted input: it is read as JSON only (nothing in it is run), and every
    field is checked (see :func:`read_filter_file`). It is then checked against the model: the
    same input shape and number of outputs, a layer the model has (an index must still name
    the layer the filter was fitted on) with as many neurons as when it was fitted, and, when
    ``model_path`` is given and the file records the model file's SHA-256, the same file.

    The model is wrapped with the layout, value range, output kind and preprocessing the file
    records; the options below may repeat them, and a value that differs is refused (the
    filter's scores were fitted under the file's). A preprocessing function cannot be stored:
    when the filter was fitted with one, pass it again as ``preprocessing=``.

    Args:
        path: The filter file.
        model: The model the filter was fitted on: a ``torch.nn.Module``, a Keras model or a
            wrapped :class:`~neuralcleanse.backends.Classifier` (e.g. from
            :func:`~neuralcleanse.frontends.api.prepare`).
        model_path: The model's file, to check against the SHA-256 the filter file records.
        ignore_sha256: Use the filter even when the model file's SHA-256 differs (with a
            warning).
        output: ``"logits"`` or ``"probabilities"``; must agree with the file.
        channels_first: Input layout; must agree with the file.
        clip_values: Raw input range; must agree with the file.
        preprocessing: ``(subtrahend, divisor)`` (must agree with the file) or the function
            the filter was fitted with.
        device: Compute device for a PyTorch model.

    Returns:
        The :class:`~neuralcleanse.mitigation.InputFilter`, ready to ``predict``, score and
        refuse inputs; its ``file_info`` holds the file's rates and SHA-256.

    Raises:
        LoadError: On a file that cannot be read or is not a valid filter file, or that does
            not fit the model (each message names the file and the field or the mismatch).
        InputError: On a bad option.
        InputTypeError: On a model of an unsupported type.
    """
    spec = read_filter_file(path)
    mismatch = None if model_path is None else _check_sha256(
        spec, checked_path(model_path, "model_path"), bool(ignore_sha256))
    _check_options(spec, output=output, channels_first=channels_first,
                   clip_values=clip_values, preprocessing=preprocessing)
    clf = _wrapped(spec, model, preprocessing, device)
    _check_model(spec, clf)
    filt = InputFilter(clf, spec.layer, spec.neurons, spec.center, spec.scale, spec.threshold,
                       weights=spec.weights)
    filt.file_info = {"n_neurons": spec.n_neurons,
                      **{name: getattr(spec, name) for name in FITTING_FIELDS},
                      "model_sha256": spec.model["file_sha256"]}
    if mismatch is not None:  # said once the filter is known to fit the model
        warnings.warn(mismatch, UserWarning, stacklevel=2)
    return filt


def _check_sha256(spec: FilterFile, model_path: Path, ignore: bool) -> str | None:
    """Refuse a model file whose SHA-256 differs; with ``ignore``, return the warning."""
    expected = spec.model["file_sha256"]
    if expected is None:  # the file records none: nothing to compare
        return None
    if not model_path.is_file():
        raise LoadError(f"model_path {str(model_path)!r} is not a file, so its SHA-256 cannot "
                        f"be checked against the one {spec.where} records")
    from neuralcleanse.io.sarif import sha256_of

    actual = sha256_of(model_path)
    if actual == expected:
        return None
    text = (f"{spec.where} was fitted on a model file with SHA-256 {expected[:16]}..., but "
            f"{str(model_path)!r} has SHA-256 {actual[:16]}...")
    if ignore:
        return f"{text}; using the filter anyway, as asked"
    raise LoadError(f"{text}: use the filter with the model it was fitted on, or pass "
                    "ignore_sha256=True to use it anyway")


def _same_preprocessing(a: Any, b: Any, shape: tuple[int, ...]) -> bool:
    """Whether two preprocessing specs (or descriptions) are the same arithmetic.

    A function (or a function's name, as ``describe()`` gives it) equals nothing: it cannot be
    compared.
    """
    if isinstance(a, str) or isinstance(b, str) or callable(a) or callable(b):
        return False
    pa, pb = split_preprocessing(a, shape), split_preprocessing(b, shape)
    if pa is None or pb is None:
        return pa is None and pb is None
    if callable(pa) or callable(pb):
        return False
    return all(np.array_equal(np.broadcast_to(u, shape), np.broadcast_to(v, shape))
               for u, v in zip(pa, pb))


def _check_options(spec: FilterFile, *, output: Any, channels_first: Any, clip_values: Any,
                   preprocessing: Any) -> None:
    """Refuse options that differ from what the filter was fitted under."""
    model = spec.model
    fitted = f"{spec.where} was fitted"
    if channels_first is not None and bool(channels_first) != model["channels_first"]:
        raise LoadError(f"{fitted} for channels_first={model['channels_first']}, but "
                        f"channels_first={bool(channels_first)} was given")
    if clip_values is not None and check_clip_values(clip_values) != model["clip_values"]:
        raise LoadError(f"{fitted} for clip_values={_pair(model['clip_values'])}, but "
                        f"clip_values={_pair(check_clip_values(clip_values))} was given; leave "
                        "it out to use the file's")
    if output is not None and output != model["output"]:
        raise LoadError(f"{fitted} on a model whose output= is {model['output']!r}, but "
                        f"{output!r} was given; leave it out to use the file's")
    recorded = model["preprocessing"]
    if isinstance(recorded, str):  # a function: it cannot be compared, only given again
        if preprocessing is None:
            raise LoadError(f"{fitted} with a preprocessing function ({recorded!r}), which a "
                            "file cannot hold: pass that function as preprocessing=")
        return
    if preprocessing is None:
        return
    if callable(preprocessing):
        raise LoadError(f"{fitted} with preprocessing= {shown(recorded, 80)}, not with a "
                        "function: leave it out to use the file's")
    if not _same_preprocessing(preprocessing, recorded, model["input_shape"]):
        given = shown(_plain(preprocessing), 80)
        if recorded is None:
            raise LoadError(f"{fitted} with no preprocessing, but preprocessing= {given} was "
                            "given; leave it out")
        raise LoadError(f"{fitted} with preprocessing= {shown(recorded, 80)}, but {given} was "
                        "given; leave it out to use the file's")


def _pair(values: tuple[float, float]) -> str:
    return f"{values[0]:g},{values[1]:g}"


def _plain(value: Any) -> Any:
    """A preprocessing spec with its arrays as lists, for a message."""
    try:
        return [np.asarray(part).tolist() for part in value]
    except (TypeError, ValueError):
        return value


def _wrapped(spec: FilterFile, model: Any, preprocessing: Preprocessing, device: Any
             ) -> Classifier:
    """The model wrapped as the filter was fitted (a Classifier is checked, not rewrapped)."""
    facts = spec.model
    if isinstance(model, Classifier):
        described = model.describe()
        for key in ("channels_first", "output"):
            if described.get(key) != facts[key]:
                raise LoadError(f"{spec.where} was fitted for {key} {facts[key]!r}, but the "
                                f"wrapped model has {described.get(key)!r}")
        if tuple(model.clip_values) != facts["clip_values"]:
            raise LoadError(f"{spec.where} was fitted for inputs in clip_values "
                            f"{list(facts['clip_values'])}, but the wrapped model has "
                            f"{list(model.clip_values)}")
        recorded, own = facts["preprocessing"], described.get("preprocessing")
        same = isinstance(own, str) if isinstance(recorded, str) else (
            (own is None and recorded is None)
            or _same_preprocessing(own, recorded, facts["input_shape"]))
        if not same:
            raise LoadError(f"{spec.where} was fitted with preprocessing "
                            f"{shown(recorded, 80)}, but the wrapped model has "
                            f"{shown(described.get('preprocessing'), 80)}")
        return model
    recorded = facts["preprocessing"]
    if preprocessing is None and isinstance(recorded, list):
        preprocessing = (np.asarray(recorded[0], np.float32),
                         np.asarray(recorded[1], np.float32))
    options: dict[str, Any] = dict(
        input_shape=facts["input_shape"], channels_first=facts["channels_first"],
        clip_values=facts["clip_values"], output=facts["output"], preprocessing=preprocessing)
    if device is not None:
        options["device"] = device
    try:
        return wrap_model(model, **options)
    except InputTypeError:
        raise
    except InputError as exc:
        raise LoadError(f"{spec.where} does not fit the model: {one_line(exc)}") from None


def _check_model(spec: FilterFile, clf: Classifier) -> None:
    """Refuse a model whose shape, outputs, layer or neuron count the filter does not fit."""
    facts, where = spec.model, spec.where
    if tuple(clf.input_shape) != tuple(facts["input_shape"]):
        raise LoadError(f"{where} was fitted on a model taking inputs of shape "
                        f"{tuple(facts['input_shape'])}, but this model takes "
                        f"{tuple(clf.input_shape)}: use the filter with the model it was "
                        "fitted on")
    if int(clf.nb_classes) != facts["nb_classes"]:
        raise LoadError(f"{where} was fitted on a model with {facts['nb_classes']} outputs "
                        f"(classes), but this model has {clf.nb_classes}: use the filter with "
                        "the model it was fitted on")
    shown_layer = Classifier.FINAL_LAYER_INPUT if spec.layer is None else spec.layer
    if isinstance(spec.layer, int):
        try:
            name = clf.layer_spec_name(spec.layer)
        except InputError as exc:
            raise LoadError(f"{where}: field 'layer' does not fit the model: "
                            f"{one_line(exc)}") from None
        if spec.layer_name is not None and name != spec.layer_name:
            raise LoadError(f"{where}: field 'layer' is index {spec.layer}, which is layer "
                            f"{name!r} in this model, but the filter was fitted on layer "
                            f"{spec.layer_name!r}: use the filter with the model it was "
                            "fitted on")
    count = probe_neurons(clf, spec.layer, where)
    if count != spec.n_neurons:
        raise LoadError(f"{where} was fitted on layer {shown_layer!r} with {spec.n_neurons} "
                        f"neurons, but that layer of this model has {count}: use the filter "
                        "with the model it was fitted on")
