"""The model and data flags, resolved: load the model and the data, layout, range, output kind.

Values that the library checks again are parsed here only as far as the flag's wording needs
(and so that a bad value is refused before the model is loaded); the rules themselves are the
library's (:mod:`neuralcleanse.core.checks`).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.backends.differentiable import split_preprocessing
from neuralcleanse.backends.loading import LoadedModel, load_model
from neuralcleanse.core.checks import (
    add_channel_axis,
    check_clip_values,
    rows_are_probabilities,
)
from neuralcleanse.core.errors import InputError
from neuralcleanse.frontends.cli.messages import CliError, qpath, quote
from neuralcleanse.frontends.cli.options import (
    MAX_INPUT_MAGNITUDE,
    DataLayout,
    OutputKind,
    parse_json,
    parse_numbers,
    parse_shape,
)
from neuralcleanse.io.data_files import LoadedData, balanced_subsample, load_data, to_layout

#: Images whose outputs decide whether the model returns probability rows.
OUTPUT_PROBE_IMAGES = 64


class Inputs:
    """Everything the model and data flags resolve to, shared by scan, mitigate and filter.

    ``y`` is ``None`` only for data read with ``require_labels=False`` that has no labels.
    """

    def __init__(self, model: LoadedModel, data: LoadedData, x: np.ndarray,
                 y: np.ndarray | None,
                 channels_first: bool, clip_values: tuple[float, float] | None,
                 preprocessing: tuple[np.ndarray, np.ndarray] | None, output: str | None,
                 output_source: str, device: str | None) -> None:
        self.model = model
        self.data = data
        self.x = x
        self.y = y
        self.channels_first = channels_first
        self.clip_values = clip_values
        self.preprocessing = preprocessing
        self.output = output
        self.output_source = output_source
        self.device = device

    def wrap_options(self) -> dict[str, Any]:
        """Keyword arguments for ``scan`` / ``mitigate`` / ``prepare``."""
        return dict(output=self.output, channels_first=self.channels_first,
                    clip_values=self.clip_values, preprocessing=self.preprocessing,
                    device=self.device)

    def model_info(self, clf_info: dict[str, Any]) -> dict[str, Any]:
        """The report's ``model_info``: the file's facts, the classifier's, and their sources."""
        info = dict(self.model.info)
        info.update(clf_info)
        info["output_source"] = self.output_source
        info["channel_order"] = "channels first" if self.channels_first else "channels last"
        info["clip_values_source"] = "given" if self.clip_values is not None else \
            "inferred from the data"
        if info.get("preprocessing") is None and self.preprocessing is not None:
            info["preprocessing"] = [self.preprocessing[0].tolist(),
                                     self.preprocessing[1].tolist()]
        return info


def load_inputs(model_path: Path, data_path: Path, *, arch: str | None, arch_kwargs: str | None,
                trust_pickle: bool, input_shape: str | None, channels_first: bool | None,
                clip_values: str | None, subtract: str | None, divide: str | None,
                output: OutputKind, device: str | None, x_key: str | None, y_key: str | None,
                max_samples: int | None, data_layout: DataLayout, seed: int,
                defaults: dict[str, Any] | None = None, require_labels: bool = True) -> Inputs:
    """Load and check the model and the data named on the command line.

    ``defaults`` (a scan report's ``model_info``) fills the model flags that were not given.
    ``require_labels=False`` reads data without labels too (``Inputs.y`` is then ``None``):
    inputs to filter rather than clean data to scan with.
    """
    defaults = defaults or {}
    for path, what in ((model_path, "model file"), (data_path, "data path")):
        if not path.exists():
            raise CliError(f"{what} {qpath(path)} does not exist")
    kwargs: dict[str, Any] = {}
    if arch_kwargs is not None:
        kwargs = parse_json(arch_kwargs, "--arch-kwargs")
        if not isinstance(kwargs, dict):
            raise CliError("--arch-kwargs must be a JSON object, e.g. '{\"nb_classes\": 43}'")
    shape = parse_shape(input_shape)
    clip = clip_range(clip_values, defaults.get("clip_values"))
    if subtract is not None or divide is not None:
        preprocessing_values(subtract, divide)  # refuse bad numbers before loading anything
    loaded = load_model(model_path, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle,
                        device=device)
    loaded.info.update(file_facts(model_path))
    if channels_first is None:
        known = defaults.get("channels_first")
        channels_first = known if isinstance(known, bool) else loaded.channels_first_default
    target_shape = shape or loaded.input_shape
    image_size, channels = None, None
    if target_shape is not None and len(target_shape) == 3:
        if channels_first:
            channels, image_size = target_shape[0], target_shape[1:]
        else:
            image_size, channels = target_shape[:2], target_shape[2]
    elif target_shape is not None:
        image_size, channels = target_shape, 1
    data = load_data(data_path, x_key=x_key, y_key=y_key, image_size=image_size,
                     channels=channels if channels in (1, 3) else None,
                     require_labels=require_labels)
    x, note = to_layout(data.x, channels_first, data_layout.value)
    if note:
        data.info["layout_change"] = note
    y = None if data.y is None else np.asarray(data.y)
    if max_samples is not None and max_samples < len(x):
        if y is None:
            raise CliError("--max-samples draws a class-balanced sample, which needs labels: "
                           "the data has none")
        if y.ndim != 1:
            raise CliError("--max-samples needs integer labels (the labels are not a vector)")
        keep = balanced_subsample(y, max_samples, seed)
        x, y = x[keep], y[keep]
        data.info["subsample"] = {"max_samples": int(max_samples), "seed": int(seed),
                                  "of": int(len(data.x))}
    if shape is not None and x.ndim == 4 and tuple(x.shape[1:]) != shape:
        raise CliError(f"the data has images of shape {tuple(x.shape[1:])} but --input-shape "
                       f"is {shape}")

    preprocessing = _preprocessing(subtract, divide, channels_first, x,
                                   defaults.get("preprocessing"))
    out_kind: str | None = None if output is OutputKind.auto else output.value
    source = "given"
    if out_kind is None and defaults.get("output") in ("logits", "probabilities"):
        out_kind, source = defaults["output"], "from the scan report"
    inputs = Inputs(loaded, data, x, y, channels_first, clip, preprocessing, out_kind, source,
                    device)
    if inputs.output is None:
        detect_output(inputs)
    return inputs


def file_facts(path: Path) -> dict[str, Any]:
    """``file_sha256`` and ``file_bytes`` of a model file (streamed), for the report.

    A model given as a folder (a SavedModel, say) has no single file to hash: nothing.
    """
    if not path.is_file():
        return {}
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"file_sha256": digest.hexdigest(), "file_bytes": size}


def clip_range(text: str | None, default: Any) -> tuple[float, float] | None:
    """The value range from ``--clip-values``, else the scan report's, else ``None``.

    The pair rule is :func:`~neuralcleanse.core.checks.check_clip_values`; a report's range
    it refuses is ignored (the data's range is inferred instead).
    """
    if text is None:
        if default is None or isinstance(default, (str, bytes, dict)):
            return None
        try:
            return check_clip_values(default)
        except InputError:
            return None
    lo, hi = parse_numbers(text, "--clip-values", 2)
    if max(abs(lo), abs(hi)) > MAX_INPUT_MAGNITUDE:
        raise CliError(f"--clip-values must lie within +-{MAX_INPUT_MAGNITUDE:g} "
                       f"(got {quote(text)})")
    try:
        return check_clip_values((lo, hi))
    except InputError:  # finite and in range, so the rule broken is MIN < MAX
        raise CliError(f"--clip-values needs MIN < MAX (got {quote(text)})") from None


def preprocessing_values(subtract: str | None, divide: str | None
                         ) -> tuple[list[float], list[float]]:
    """The numbers of ``--subtract`` and ``--divide``, checked (usable in float32)."""
    sub = parse_numbers(subtract, "--subtract") if subtract is not None else [0.0]
    div = parse_numbers(divide, "--divide") if divide is not None else [1.0]
    if any(v == 0 for v in div):
        raise CliError("--divide must not contain 0")
    if max(abs(v) for v in sub) > MAX_INPUT_MAGNITUDE:
        raise CliError(f"--subtract values must lie within +-{MAX_INPUT_MAGNITUDE:g}")
    if not all(1 / MAX_INPUT_MAGNITUDE <= abs(v) <= MAX_INPUT_MAGNITUDE for v in div):
        raise CliError(f"--divide values must lie between {1 / MAX_INPUT_MAGNITUDE:g} and "
                       f"{MAX_INPUT_MAGNITUDE:g} in size")
    return sub, div


def _preprocessing(subtract: str | None, divide: str | None, channels_first: bool,
                   x: np.ndarray, default: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if subtract is None and divide is None:
        if isinstance(default, list) and len(default) == 2:
            return _report_preprocessing(default, x, channels_first)
        return None
    sub, div = preprocessing_values(subtract, divide)
    channels = 1 if x.ndim == 3 else (x.shape[1] if channels_first else x.shape[-1])

    def shaped(values: list[float], flag: str) -> np.ndarray:
        if len(values) == 1:
            return np.float32(values[0]) * np.ones((), np.float32)
        if len(values) != channels:
            raise CliError(f"{flag} has {len(values)} values but the images have {channels} "
                           "channel(s): give one value or one per channel")
        arr = np.asarray(values, np.float32)
        return arr.reshape(-1, 1, 1) if channels_first else arr

    return shaped(sub, "--subtract"), shaped(div, "--divide")


def _report_preprocessing(default: list[Any], x: np.ndarray, channels_first: bool
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """A scan report's ``model_info.preprocessing``, checked by the library's rule."""
    image_shape = tuple((x if x.ndim == 4 else add_channel_axis(x[:1], channels_first)
                         ).shape[1:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an overflow to inf is refused just below
            checked = split_preprocessing((default[0], default[1]), image_shape)
    except (InputError, OverflowError):  # OverflowError: an integer too large for a float
        raise CliError("the scan report's model_info.preprocessing is not two finite numbers "
                       "or lists of numbers, fitting the images, with a non-zero divisor; give "
                       "--subtract and --divide") from None
    if checked is None:  # the identity
        return None
    return np.asarray(checked[0], np.float32), np.asarray(checked[1], np.float32)


def detect_output(inputs: Inputs) -> None:
    """Set ``inputs.output`` from whether the model's outputs are probability rows."""
    from neuralcleanse.frontends.api import prepare

    sample = inputs.x[:OUTPUT_PROBE_IMAGES]
    options = inputs.wrap_options()
    options["output"] = "logits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf, images, _ = prepare(inputs.model.model, sample, None, **options)
    probabilities = rows_are_probabilities(clf.predict(images))
    inputs.output = "probabilities" if probabilities else "logits"
    inputs.output_source = "detected from the model's outputs"
