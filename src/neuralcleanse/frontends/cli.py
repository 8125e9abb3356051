"""The ``neuralcleanse`` command line: ``scan``, ``mitigate``, ``report`` and ``demo``.

Exit codes (the same for every command):

* ``0``: success; for ``scan``, no label was flagged.
* ``1``: ``scan`` flagged at least one label as a backdoor target.
* ``2``: usage or input error (unknown flag, bad value, missing or unreadable model or data).
* ``3``: unexpected internal error (``--debug`` shows the traceback).
* ``130``: interrupted (Ctrl-C); ``scan`` leaves a partial report and ``--resume`` continues it.

Errors are printed as one line on stderr, never as a traceback (unless ``--debug``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sys
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from neuralcleanse import __version__
from neuralcleanse.backends.loading import LoadedModel, load_model
from neuralcleanse.core.config import MAX_SEED, ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult, dumps
from neuralcleanse.io.data_files import (
    LoadedData,
    balanced_subsample,
    fingerprint,
    load_data,
    to_layout,
)
from neuralcleanse.mitigation.unlearning import MAX_EPOCHS, MAX_LEARNING_RATE

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import ClickException

EXIT_CLEAN, EXIT_FLAGGED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PARTIAL_DIR = "partial"
DEFAULT_OUT = "neuralcleanse-report"
#: Labels given with ``--labels`` must lie in ``[0, MAX_LABEL]`` (checked before a range is
#: expanded, so ``0-999999999999`` is refused at once instead of filling the memory).
MAX_LABEL = 999_999
#: Largest ``--config`` file read (settings files are a few hundred bytes).
MAX_CONFIG_BYTES = 2**20
#: Each side of ``--input-shape`` is at most this, and one input at most ``MAX_INPUT_VALUES``.
MAX_SIDE = 65_536
MAX_INPUT_VALUES = 2**26
#: Most ``--restarts``.
MAX_RESTARTS = 1000
SEED_MAX = MAX_SEED

_state: dict[str, Any] = {"debug": False}


class CliError(InputError):
    """A usage or input error; its message is shown as one line and the exit code is 2."""


app = typer.Typer(
    name="neuralcleanse",
    help="Find and remove backdoors in trained image classifiers (Neural Cleanse).\n\n"
         "Exit codes: 0 nothing flagged / success, 1 backdoor flagged (scan), 2 usage or input "
         "error, 3 internal error, 130 interrupted.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"neuralcleanse {__version__}")
        raise typer.Exit(EXIT_CLEAN)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors."
                                        )] = False,
) -> None:
    """Find and remove backdoors in trained image classifiers (Neural Cleanse)."""
    _state["debug"] = debug


# -- option types shared by several commands -------------------------------------------------
class OutputKind(str, Enum):
    """What the model's last layer returns."""

    auto = "auto"
    logits = "logits"
    probabilities = "probabilities"


class DataLayout(str, Enum):
    """Where the channel axis of 4-D data sits."""

    auto = "auto"
    nhwc = "nhwc"
    nchw = "nchw"


class Preset(str, Enum):
    """Default search settings to start from."""

    paper = "paper"
    fast = "fast"
    art = "art"


class Method(str, Enum):
    """Mitigation methods."""

    unlearning = "unlearning"
    pruning = "pruning"
    filtering = "filtering"


_MODEL = "Model"
_DATA = "Data"
_SEARCH = "Search settings (defaults: the paper's; see also --config)"
_OUT = "Output"
_MIT = "Mitigation options"

ModelArg = Annotated[Path, typer.Argument(
    help="Model file: .keras/.h5 (Keras), a TorchScript file, a torch.export archive (.pt2), "
         "PyTorch weights as .safetensors (recommended) or a state dict (both with --arch), "
         "or a pickled module (with --trust-pickle). The format is read from the content; "
         "nothing in the file is run unless --trust-pickle is given (see SECURITY.md).",
    show_default=False)]
ArchOpt = Annotated[str | None, typer.Option(
    "--arch", metavar="MODULE:FACTORY", rich_help_panel=_MODEL,
    help="For a state dict: the function that builds the network, e.g. "
         "neuralcleanse.backends.torch.architectures:mnist_badnet.")]
ArchKwargsOpt = Annotated[str | None, typer.Option(
    "--arch-kwargs", metavar="JSON", rich_help_panel=_MODEL,
    help='Keyword arguments for the --arch factory, as JSON, e.g. \'{"nb_classes": 43}\'.')]
TrustPickleOpt = Annotated[bool, typer.Option(
    "--trust-pickle", rich_help_panel=_MODEL,
    help="Trust the model file: allow what RUNS CODE STORED IN THE FILE: a pickled full "
         "PyTorch module, Keras Lambda layers, a torch.export archive that cannot be verified "
         "(custom objects, AOTInductor, arbitrary pickles). Only for files you trust.")]
InputShapeOpt = Annotated[str | None, typer.Option(
    "--input-shape", metavar="DIMS", rich_help_panel=_MODEL,
    help="Shape of one input in the model's layout, e.g. 1,28,28 (channels first) or 32,32,3; "
         "image folders are resized to it, other data must match it. Default: the model's "
         "own (Keras) or the data's.")]
ChannelsOpt = Annotated[bool | None, typer.Option(
    "--channels-first/--channels-last", rich_help_panel=_MODEL, show_default=False,
    help="Channel order the model takes. Default: first for PyTorch, last for Keras.")]
ClipOpt = Annotated[str | None, typer.Option(
    "--clip-values", metavar="MIN,MAX", rich_help_panel=_MODEL,
    help="Raw input value range, e.g. 0,255. Default: 0,1 or 0,255, whichever the data "
         "fits.")]
SubtractOpt = Annotated[str | None, typer.Option(
    "--subtract", metavar="V[,V...]", rich_help_panel=_MODEL,
    help="Preprocessing applied after the trigger is stamped: (x - SUBTRACT) / DIVIDE. One "
         "value, or one per channel.")]
DivideOpt = Annotated[str | None, typer.Option(
    "--divide", metavar="V[,V...]", rich_help_panel=_MODEL,
    help="Divisor of the preprocessing (see --subtract).")]
OutputOpt = Annotated[OutputKind, typer.Option(
    "--output", rich_help_panel=_MODEL, case_sensitive=False,
    help="What the model returns; auto checks whether its outputs are probability rows.")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", rich_help_panel=_MODEL, help="PyTorch device, e.g. cpu or cuda (default cpu).")]
DataOpt = Annotated[Path, typer.Option(
    "--data", "-d", rich_help_panel=_DATA, show_default=False,
    help="Clean labelled images: an .npz file or a folder with one sub-folder per class.")]
XKeyOpt = Annotated[str | None, typer.Option(
    "--x-key", rich_help_panel=_DATA, help="Key of the images in the .npz (default: detected).")]
YKeyOpt = Annotated[str | None, typer.Option(
    "--y-key", rich_help_panel=_DATA, help="Key of the labels in the .npz (default: detected).")]
MaxSamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", min=1, rich_help_panel=_DATA,
    help="Use at most this many images: a seeded (--seed), class-balanced subsample.")]
LayoutOpt = Annotated[DataLayout, typer.Option(
    "--data-layout", rich_help_panel=_DATA, case_sensitive=False,
    help="Channel axis of 4-D data; auto guesses it and moves it where the model wants it.")]


# -- small parsers ---------------------------------------------------------------------------
def _quote(text: Any, limit: int = 60) -> str:
    """``repr`` of a user's value, shortened, for an error message (never raises)."""
    try:
        shown = repr(text)
    except ValueError:  # an int too long to print
        shown = f"a {type(text).__name__}"
    return shown if len(shown) <= limit else shown[:limit - 4] + "...'"


def _qpath(path: Any) -> str:
    """A path quoted for a message, in full (the caller's :func:`printable` escapes it)."""
    return repr(str(path))


def _numbers(text: str, flag: str, count: int | None = None) -> list[float]:
    """Comma-separated finite numbers (``count`` of them when given)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise CliError(f"{flag} takes comma-separated numbers (got {_quote(text)})") from None
    if not values or (count is not None and len(values) != count):
        want = f"{count} comma-separated numbers" if count else "comma-separated numbers"
        raise CliError(f"{flag} takes {want} (got {_quote(text)})")
    if not all(math.isfinite(v) for v in values):
        raise CliError(f"{flag} values must be finite (got {_quote(text)})")
    return values


def _int_list(text: str, flag: str) -> list[int]:
    """Sorted distinct integers in ``[0, MAX_LABEL]`` from ``0,3,5-7``; ranges checked first."""
    out: set[int] = set()
    usage = f"{flag} takes integers or ranges like 0,3,5-7 in 0..{MAX_LABEL}"
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            raise CliError(f"{usage} (got {_quote(text)})") from None
        if not 0 <= first <= MAX_LABEL or not 0 <= last <= MAX_LABEL:
            raise CliError(f"{usage} (got {_quote(part)})")
        if last < first:
            raise CliError(f"{flag}: the range {_quote(part)} runs backwards; write "
                           f"{last}-{first}")
        out.update(range(first, last + 1))
    if not out:
        raise CliError(f"{flag} is empty")
    return sorted(out)


def _auto_int(text: str | None, flag: str, word: str) -> int | None | str:
    """Parse ``N`` or the word meaning ``None``; returns ``"unset"`` when not given."""
    if text is None:
        return "unset"
    if text.strip().lower() == word:
        return None
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{flag} takes an integer or {word!r} (got {_quote(text)})") from None


def _json_text(text: str, what: str, hint: str = "write a finite number") -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``); every failure is a one-line CliError."""
    def refuse(name: str) -> Any:
        raise CliError(f"{what}: JSON has no {name} ({hint})")

    try:
        return json.loads(text, parse_constant=refuse)
    except CliError:
        raise
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # > 4300-digit integers, deep nesting
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else \
            "it holds a number too long to read"
        raise CliError(f"{what} is not usable JSON: {why}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Read search settings from a JSON or TOML file (a flat table, or a ``[scan]`` table).

    Keys are :class:`ScanConfig` field names (dashes allowed); ``mini_batches = "all"`` and
    ``label_batch = "auto"`` stand for ``None``.
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise CliError(f"--config takes a .json or .toml file (got {_qpath(path)})")
    if not path.exists():
        raise CliError(f"config file {_qpath(path)} does not exist")
    if not path.is_file():
        raise CliError(f"config file {_qpath(path)} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CliError(f"config file {_qpath(path)} is larger than 1 MiB: not a settings "
                       "file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"config file {_qpath(path)} is not UTF-8 text") from None
    name = _qpath(path.name)
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{name} is not valid TOML: {exc}") from None
        except (ValueError, RecursionError) as exc:
            why = "it is nested too deeply" if isinstance(exc, RecursionError) else \
                "it holds a value too long to read"
            raise CliError(f"{name} is not usable TOML: {why}") from None
    else:
        data = _json_text(text, name, 'write a finite number; for norm, the string "inf"')
    if isinstance(data, dict) and isinstance(data.get("scan"), dict) and len(data) == 1:
        data = data["scan"]
    if not isinstance(data, dict):
        raise CliError(f"{name} must hold a table of search settings")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key, word in (("mini_batches", "all"), ("label_batch", "auto")):
        if isinstance(out.get(key), str) and out[key].strip().lower() == word:
            out[key] = None
    unknown = sorted(set(out) - set(ScanConfig.field_names()))
    if unknown:
        shown = ", ".join(_quote(k, 30) for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CliError(f"{name}: unknown setting(s) {shown}{more}; valid settings are "
                       f"{', '.join(ScanConfig.field_names())}")
    return out


def build_config(preset: Preset, config_file: Path | None, flags: dict[str, Any]) -> ScanConfig:
    """Settings from the preset, then the config file, then the flags given on the line."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    given = {k: v for k, v in flags.items() if not (isinstance(v, str) and v == "unset")}
    settings.update(given)
    if "progress" not in settings:
        settings["progress"] = sys.stdout.isatty()
    try:
        return ScanConfig.preset(preset.value, **settings)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        name = next((k for k in ScanConfig.field_names() if text.startswith(f"{k} ")), None)
        if name in given:  # say which flag, or which file, held the bad value
            raise CliError(f"--{name.replace('_', '-')}: {text}") from None
        if name is not None and config_file is not None:
            raise CliError(f"{_qpath(config_file.name)}: {text}") from None
        raise CliError(f"bad search setting: {text}") from None


# -- loading ---------------------------------------------------------------------------------
def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").replace(" ", "").strip("()").split(",")
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise CliError(f"--input-shape takes integers like 1,28,28 (got {_quote(text)})"
                       ) from None
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise CliError(f"--input-shape takes 2 or 3 positive integers (got {_quote(text)})")
    if max(dims) > MAX_SIDE or math.prod(dims) > MAX_INPUT_VALUES:
        raise CliError(f"--input-shape {_quote(text)} is too large: each side at most "
                       f"{MAX_SIDE} and at most {MAX_INPUT_VALUES} values per input")
    return dims


class Inputs:
    """Everything the model and data flags resolve to, shared by scan and mitigate."""

    def __init__(self, model: LoadedModel, data: LoadedData, x: np.ndarray, y: np.ndarray,
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


def load_inputs(model_path: Path, data_path: Path, *, arch: str | None, arch_kwargs: str | None,
                trust_pickle: bool, input_shape: str | None, channels_first: bool | None,
                clip_values: str | None, subtract: str | None, divide: str | None,
                output: OutputKind, device: str | None, x_key: str | None, y_key: str | None,
                max_samples: int | None, data_layout: DataLayout, seed: int,
                defaults: dict[str, Any] | None = None) -> Inputs:
    """Load and check the model and the data named on the command line.

    ``defaults`` (a scan report's ``model_info``) fills the model flags that were not given.
    """
    defaults = defaults or {}
    for path, what in ((model_path, "model file"), (data_path, "data path")):
        if not path.exists():
            raise CliError(f"{what} {_qpath(path)} does not exist")
    kwargs: dict[str, Any] = {}
    if arch_kwargs is not None:
        kwargs = _json_text(arch_kwargs, "--arch-kwargs")
        if not isinstance(kwargs, dict):
            raise CliError("--arch-kwargs must be a JSON object, e.g. '{\"nb_classes\": 43}'")
    shape = _shape(input_shape)
    clip = _clip(clip_values, defaults.get("clip_values"))
    if subtract is not None or divide is not None:
        _preprocessing_values(subtract, divide)  # refuse bad numbers before loading anything
    loaded = load_model(model_path, arch=arch, arch_kwargs=kwargs, trust_pickle=trust_pickle,
                        device=device)
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
                     channels=channels if channels in (1, 3) else None)
    x, note = to_layout(data.x, channels_first, data_layout.value)
    if note:
        data.info["layout_change"] = note
    y = np.asarray(data.y)
    if max_samples is not None and max_samples < len(x):
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
        _detect_output(inputs)
    return inputs


#: Largest magnitude of a value range or preprocessing constant: it stays finite in float32
#: (``float32`` overflows at 3.4e38) with room for the arithmetic of stamping.
MAX_INPUT_MAGNITUDE = 1e30


def _clip(text: str | None, default: Any) -> tuple[float, float] | None:
    """The value range from ``--clip-values``, else the scan report's, else ``None``."""
    if text is None:
        if isinstance(default, list) and len(default) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
            lo, hi = float(default[0]), float(default[1])
            if math.isfinite(lo) and math.isfinite(hi) and lo < hi:
                return lo, hi
        return None
    lo, hi = _numbers(text, "--clip-values", 2)
    if not lo < hi:
        raise CliError(f"--clip-values needs MIN < MAX (got {_quote(text)})")
    if max(abs(lo), abs(hi)) > MAX_INPUT_MAGNITUDE:
        raise CliError(f"--clip-values must lie within +-{MAX_INPUT_MAGNITUDE:g} "
                       f"(got {_quote(text)})")
    return lo, hi


def _preprocessing_values(subtract: str | None, divide: str | None
                          ) -> tuple[list[float], list[float]]:
    """The numbers of ``--subtract`` and ``--divide``, checked (usable in float32)."""
    sub = _numbers(subtract, "--subtract") if subtract is not None else [0.0]
    div = _numbers(divide, "--divide") if divide is not None else [1.0]
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
            try:
                pair = (np.asarray(default[0], np.float32), np.asarray(default[1], np.float32))
            except (TypeError, ValueError):
                pair = None
            if pair is None or not all(np.all(np.isfinite(a)) for a in pair) \
                    or np.any(pair[1] == 0):
                raise CliError("the scan report's model_info.preprocessing is not two finite "
                               "numbers or lists of numbers with a non-zero divisor; give "
                               "--subtract and --divide")
            return pair
        return None
    sub, div = _preprocessing_values(subtract, divide)
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


def _detect_output(inputs: Inputs) -> None:
    """Set ``inputs.output`` from whether the model's outputs are probability rows."""
    from neuralcleanse.frontends.api import prepare

    sample = inputs.x[:64]
    options = inputs.wrap_options()
    options["output"] = "logits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf, images, _ = prepare(inputs.model.model, sample, None, **options)
    out = clf.predict(images)
    rows_are_probabilities = bool(np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6)
                                  and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    inputs.output = "probabilities" if rows_are_probabilities else "logits"
    inputs.output_source = "detected from the model's outputs"


def _model_info(inputs: Inputs, clf_info: dict[str, Any]) -> dict[str, Any]:
    info = dict(inputs.model.info)
    info.update(clf_info)
    info["output_source"] = inputs.output_source
    info["channel_order"] = "channels first" if inputs.channels_first else "channels last"
    info["clip_values_source"] = "given" if inputs.clip_values is not None else \
        "inferred from the data"
    if info.get("preprocessing") is None and inputs.preprocessing is not None:
        info["preprocessing"] = [inputs.preprocessing[0].tolist(),
                                 inputs.preprocessing[1].tolist()]
    return info


# -- output folders --------------------------------------------------------------------------
def _say(console: Console, text: str, style: str | None = None) -> None:
    """Print a line that may hold the user's paths: no markup, no control characters."""
    console.print(printable(text), style=style, markup=False, highlight=False, soft_wrap=True)


#: What a command writes into its output folder: files, and folders (ending with "/").
SCAN_OUTPUTS = ("report.json", "report.html", "triggers/", f"{PARTIAL_DIR}/")
MITIGATE_OUTPUTS = ("report.json", "report.html", "mitigation.json", "triggers/")


def prepare_folder(folder: Path, flag: str, outputs: tuple[str, ...] = ()) -> list[Path]:
    """Make ``folder`` (creating it if needed) and check that it can be written, up front.

    ``outputs`` names what the command will write there; an existing entry of the wrong kind
    (a folder where a file goes, or the reverse) is refused now rather than after the work.

    Returns:
        The folders created, outermost first (see :func:`remove_if_empty`).

    Raises:
        CliError: When the folder cannot be made or written; the message names ``flag``.
    """
    where = f"{flag} {_qpath(folder)}"
    if folder.exists() and not folder.is_dir():
        raise CliError(f"{where} is a file, not a folder")
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the folder {where}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    created = missing[::-1]
    try:
        test = folder / f".neuralcleanse-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        test.unlink()
    except OSError as exc:
        remove_if_empty(created)
        raise CliError(f"cannot write into the folder {where}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    for name in outputs:
        entry = folder / name.rstrip("/")
        if name.endswith("/") and entry.exists() and not entry.is_dir():
            raise CliError(f"{entry} is a file, but the output goes into a folder of that "
                           f"name: move it away or choose another {flag}")
        if not name.endswith("/") and entry.is_dir():
            raise CliError(f"{entry} is a folder, but the output is a file of that name: "
                           f"move it away or choose another {flag}")
    return created


def remove_if_empty(created: list[Path]) -> None:
    """Remove folders that :func:`prepare_folder` created, innermost first, if still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


# -- resumable scans -------------------------------------------------------------------------
class PartialStore:
    """Label results written one file per label as they finish, so a scan can resume.

    Each file records a fingerprint of the model file, the data and the search settings;
    results made with anything else are refused. The folder may hold other files: the store
    reads, replaces and removes only ``label_<n>.json`` files that it wrote itself (a JSON object
    with its ``fingerprint`` and ``result`` fields), and removes the folder only when that
    leaves it empty.
    """

    NAME = re.compile(r"label_(\d+)\.json")
    #: Temporary names of :meth:`save` (pid and random part): no one else writes these.
    TMP = re.compile(r"\.label_\d+\.json\.\d+\.[0-9a-f]{8}\.tmp")
    MARKER = "neuralcleanse partial label result"
    #: Own files are small (one label's mask and pattern); larger ones are not read.
    MAX_BYTES = 256 * 2**20

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key

    def path(self, label: int) -> Path:
        """File of one label's result."""
        return self.folder / f"label_{label}.json"

    def save(self, result: LabelResult) -> None:
        """Write one finished label (atomically: a killed process leaves no torn file)."""
        from neuralcleanse.io.report import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(result.label)
        if target.exists() and self._own(target) is None:  # appeared during the scan
            raise CliError(f"{target} was not written by neuralcleanse; move it away and "
                           "rerun with --resume")
        atomic_write(target, dumps({"kind": self.MARKER, "fingerprint": self.key,
                                     "result": result.to_dict()}, indent=None))

    def _own(self, path: Path) -> dict[str, Any] | None:
        """The content of ``path`` when it is a label file this store wrote, else ``None``."""
        if not self.NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
            return None
        try:
            if path.stat().st_size > self.MAX_BYTES:
                return None
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if isinstance(data, dict) and isinstance(data.get("fingerprint"), str) \
                and isinstance(data.get("result"), dict) \
                and data.get("kind", self.MARKER) == self.MARKER:
            return data
        return None

    def _label_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((f for f in self.folder.iterdir() if self.NAME.fullmatch(f.name)),
                      key=lambda f: int(self.NAME.fullmatch(f.name).group(1)))  # type: ignore[union-attr]

    def foreign(self, labels: list[int]) -> list[Path]:
        """Files in the way of these labels' results that this store did not write."""
        return [self.path(t) for t in labels
                if (self.path(t).exists() or self.path(t).is_symlink())
                and self._own(self.path(t)) is None]

    def load(self) -> list[LabelResult]:
        """The labels finished by an earlier run with the same model, data and settings.

        Files the store did not write are left alone.
        """
        found = []
        for f in self._label_files():
            data = self._own(f)
            if data is None:
                continue
            if data["fingerprint"] != self.key:
                raise CliError(
                    f"{f} was written by a scan with another model, data or settings; "
                    f"drop --resume to start over")
            try:
                found.append(LabelResult.from_dict(data["result"]))
            except InputError as exc:
                raise CliError(f"cannot resume from {f}: {exc}") from None
        return found

    def clear(self) -> None:
        """Remove the label files this store wrote; the folder too if nothing else is in it."""
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        for f in self.folder.iterdir():
            if self.TMP.fullmatch(f.name) and f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
            elif self._own(f) is not None:
                f.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:  # the user's files are still in it
            pass


# -- commands --------------------------------------------------------------------------------
@app.command()
def scan(
    model: ModelArg,
    data: DataOpt,
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=_OUT,
        help="Folder for report.json, report.html, the trigger images (triggers/) and the "
             "finished labels of a running scan (partial/); created if needed and checked "
             "before the scan starts. Those names are replaced; nothing else in the folder is "
             "touched.")] = Path(DEFAULT_OUT),
    resume: Annotated[bool, typer.Option(
        "--resume", rich_help_panel=_OUT,
        help="Continue an interrupted scan from the labels saved in OUT/partial. Without it, "
             "the label files an earlier scan left there are removed (other files stay).")
    ] = False,
    labels: Annotated[str | None, typer.Option(
        "--labels", metavar="LIST", rich_help_panel=_OUT,
        help="Scan only these labels, e.g. 0,3,5-7 (default: all).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", rich_help_panel=_SEARCH,
        help="JSON or TOML file of search settings (ScanConfig field names); flags given on "
             "the command line win.")] = None,
    preset: Annotated[Preset, typer.Option(
        "--preset", rich_help_panel=_SEARCH, case_sensitive=False,
        help="Defaults to start from: the paper's; 'fast' (8 mini-batches per step, early-stop "
             "patience 10: 3.5-9.5x fewer images, a quick first pass whose flags should be "
             "confirmed with the paper's settings); or ART's KerasNeuralCleanse.")
    ] = Preset.paper,
    steps: Annotated[int | None, typer.Option(
        "--steps", rich_help_panel=_SEARCH,
        help="Maximum optimisation steps per label (default 1000).")] = None,
    mini_batches: Annotated[str | None, typer.Option(
        "--mini-batches", metavar="N|all", rich_help_panel=_SEARCH,
        help="Mini-batches per step; 'all' = one pass over the data (default 31).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", rich_help_panel=_SEARCH,
        help="Images per mini-batch (default 32).")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", rich_help_panel=_SEARCH,
        help="Adam learning rate (default 0.1).")] = None,
    init_cost: Annotated[float | None, typer.Option(
        "--init-cost", rich_help_panel=_SEARCH,
        help="Norm cost once it is switched on (default 0.001).")] = None,
    norm: Annotated[str | None, typer.Option(
        "--norm", metavar="1|2|inf", rich_help_panel=_SEARCH,
        help="Norm of the mask that is penalised (default 1).")] = None,
    attack_success_threshold: Annotated[float | None, typer.Option(
        "--attack-success-threshold", rich_help_panel=_SEARCH,
        help="Attack success rate a trigger must reach (default 0.99).")] = None,
    patience: Annotated[int | None, typer.Option(
        "--patience", rich_help_panel=_SEARCH,
        help="Steps in a row before the cost changes (default 5).")] = None,
    cost_multiplier: Annotated[float | None, typer.Option(
        "--cost-multiplier", rich_help_panel=_SEARCH,
        help="Cost up: times m; down: divided by m**1.5 (default 2).")] = None,
    early_stop: Annotated[bool | None, typer.Option(
        "--early-stop/--no-early-stop", rich_help_panel=_SEARCH, show_default=False,
        help="Let a label stop before --steps (default on).")] = None,
    early_stop_threshold: Annotated[float | None, typer.Option(
        "--early-stop-threshold", rich_help_panel=_SEARCH,
        help="Best norm >= this x previous best counts as no improvement (default 1.0).")] = None,
    early_stop_patience: Annotated[int | None, typer.Option(
        "--early-stop-patience", rich_help_panel=_SEARCH,
        help="Steps without improvement before a label stops (default 25).")] = None,
    anomaly_threshold: Annotated[float | None, typer.Option(
        "--anomaly-threshold", rich_help_panel=_SEARCH,
        help="Flag labels whose anomaly index exceeds this (default 2).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", rich_help_panel=_SEARCH,
        help="Seed of the trigger initialisation, mini-batches and --max-samples "
             "(default 0).")] = None,
    label_batch: Annotated[str | None, typer.Option(
        "--label-batch", metavar="N|auto", rich_help_panel=_SEARCH,
        help="Labels optimised together; 1 = one label at a time; auto = as many as "
             "--memory-budget-mb allows (default auto).")] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(
        "--memory-budget-mb", rich_help_panel=_SEARCH,
        help="Memory the stacked labels may use (default 2048).")] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", rich_help_panel=_SEARCH, show_default=False,
        help="Live progress (labels done, active, step, ETA) (default on in a terminal).")] = None,
    restarts: Annotated[int, typer.Option(
        "--restarts", min=1, max=MAX_RESTARTS, rich_help_panel=_SEARCH,
        help="Run the search with this many seeds (--seed, --seed+1, ...); norms are medians "
             "and the report says in how many runs each label was flagged.")] = 1,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    input_shape: InputShapeOpt = None,
    channels_first: ChannelsOpt = None,
    clip_values: ClipOpt = None,
    subtract: SubtractOpt = None,
    divide: DivideOpt = None,
    output: OutputOpt = OutputKind.auto,
    device: DeviceOpt = None,
    x_key: XKeyOpt = None,
    y_key: YKeyOpt = None,
    max_samples: MaxSamplesOpt = None,
    data_layout: LayoutOpt = DataLayout.auto,
) -> None:
    """Scan MODEL for backdoors on clean labelled images; write the JSON and HTML reports.

    Exit code 0 when no label is flagged, 1 when a backdoor is flagged, 2 on usage or input
    errors, 130 when interrupted (a partial report is written; --resume continues).
    """
    flags = dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                 init_cost=init_cost, attack_success_threshold=attack_success_threshold,
                 patience=patience, cost_multiplier=cost_multiplier, early_stop=early_stop,
                 early_stop_threshold=early_stop_threshold,
                 early_stop_patience=early_stop_patience, anomaly_threshold=anomaly_threshold,
                 seed=seed, memory_budget_mb=memory_budget_mb, progress=progress, norm=norm)
    flags = {k: ("unset" if v is None else v) for k, v in flags.items()}
    flags["mini_batches"] = _auto_int(mini_batches, "--mini-batches", "all")
    flags["label_batch"] = _auto_int(label_batch, "--label-batch", "auto")
    cfg = build_config(preset, config, flags)
    wanted = _int_list(labels, "--labels") if labels is not None else None
    if restarts > 1 and resume:
        raise CliError("--resume works only for a single run; drop --restarts or --resume")
    if cfg.seed + restarts - 1 > SEED_MAX:
        raise CliError(f"--restarts {restarts} from seed {cfg.seed} needs seeds up to "
                       f"{cfg.seed + restarts - 1}, but seeds go up to {SEED_MAX}")

    created = prepare_folder(out, "--out", SCAN_OUTPUTS)  # before any work, even loading
    try:
        inputs = load_inputs(model, data, arch=arch, arch_kwargs=arch_kwargs,
                             trust_pickle=trust_pickle, input_shape=input_shape,
                             channels_first=channels_first, clip_values=clip_values,
                             subtract=subtract, divide=divide, output=output, device=device,
                             x_key=x_key, y_key=y_key, max_samples=max_samples,
                             data_layout=data_layout, seed=cfg.seed)
        result = run_scan(inputs, cfg, out, resume=resume, labels=wanted, restarts=restarts)
    except BaseException:
        remove_if_empty(created)  # only folders this run made, and only while still empty
        raise
    raise typer.Exit(EXIT_FLAGGED if result.flagged_labels else EXIT_CLEAN)


def run_scan(inputs: Inputs, cfg: ScanConfig, out: Path, *, resume: bool = False,
             labels: list[int] | None = None, console: Console | None = None,
             restarts: int = 1) -> ScanResult:
    """Scan with label-by-label saving, write the reports and print the summary.

    Labels are saved as they finish (for ``--resume``) only when ``restarts`` is 1.

    On ``KeyboardInterrupt`` a partial report is written and :class:`Interrupted` raised.
    """
    from neuralcleanse.frontends import api
    from neuralcleanse.io.report import summary_table, write_report

    console = console or Console()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prepare warns again below, in scan(), if needed
        clf, images, targets = api.prepare(inputs.model.model, inputs.x, inputs.y,
                                           **inputs.wrap_options())
    assert targets is not None
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("progress",
                                                                    "anomaly_threshold")}
    key = fingerprint(inputs.model.path, images, targets, settings,
                      {k: _jsonable(v) for k, v in inputs.wrap_options().items()
                       if k != "device"})
    store = PartialStore(out / PARTIAL_DIR, key)
    if restarts == 1:
        wanted = labels if labels is not None else list(range(clf.nb_classes))
        in_the_way = store.foreign([t for t in wanted if 0 <= t < clf.nb_classes])
        if in_the_way:
            raise CliError(f"{in_the_way[0]} was not written by neuralcleanse, but the scan "
                           f"saves its finished labels under these names in {store.folder}: "
                           "move the file(s) away or choose another --out")
    done: list[LabelResult] = []
    if resume:
        done = store.load()
        if done:
            _say(console, f"resuming: {len(done)} label(s) already done in {store.folder}")
    else:
        store.clear()
    model_info = _model_info(inputs, clf.describe())
    data_info = {"n_images": int(len(images)),
                 "class_counts": np.bincount(targets, minlength=clf.nb_classes).tolist(),
                 **inputs.data.info}
    try:
        result = api.scan(clf, images, targets, config=cfg, labels=labels,
                          on_label_done=store.save if restarts == 1 else None, done=done,
                          restarts=restarts)
    except KeyboardInterrupt:
        finished = store.load()
        partial = ScanResult.from_labels(
            finished, nb_classes=clf.nb_classes, anomaly_threshold=cfg.anomaly_threshold,
            config=cfg.to_dict(), model_info=model_info, data_info=data_info,
            versions=api.versions(), partial=True)
        paths = write_report(partial, out)
        total = len(labels) if labels is not None else clf.nb_classes
        raise Interrupted(f"interrupted: {len(finished)} of {total} labels done; partial "
                          f"report in {paths.html}; rerun with --resume to continue") from None
    result.model_info = model_info
    result.data_info = data_info
    result.partial = False
    paths = write_report(result, out)
    store.clear()
    console.print(summary_table(result))
    _say(console, f"median norm {result.median_norm:.3f}, MAD {result.mad:.3f}, "
                  f"wall time {result.wall_seconds:.1f} s")
    style = "bold red" if result.flagged_labels else "bold green"
    _say(console, result.summary(), style=style)
    _say(console, f"report: {paths.html}  (JSON: {paths.json})")
    return result


class Interrupted(Exception):
    """The scan was interrupted after writing a partial report."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


@app.command()
def mitigate(
    model: ModelArg,
    data: DataOpt,
    report: Annotated[Path, typer.Option(
        "--report", "-r", rich_help_panel=_MIT, show_default=False,
        help="The scan's report folder (or its report.json): the flagged labels and their "
             "reversed triggers.")],
    method: Annotated[Method, typer.Option(
        "--method", "-m", rich_help_panel=_MIT, case_sensitive=False,
        help="unlearning (fine-tune), pruning (silence neurons) or filtering (refuse "
             "triggered inputs).")] = Method.unlearning,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", rich_help_panel=_OUT,
        help="Folder for mitigation.json, the repaired model and the re-rendered report "
             "(default: the report folder); created if needed and checked before the model is "
             "loaded. Those names (and report.json, copied from --report) are replaced; "
             "nothing else in the folder is touched.")] = None,
    save: Annotated[Path | None, typer.Option(
        "--save", rich_help_panel=_OUT,
        help="Where to save the repaired model (default: OUT/repaired_METHOD.pt or .keras, "
             "which a later run replaces). An existing file, and above all the input model "
             "itself (also through a link), is never replaced unless --overwrite-model is "
             "given. Not for filtering, which leaves the model unchanged.")] = None,
    overwrite_model: Annotated[bool, typer.Option(
        "--overwrite-model", rich_help_panel=_OUT,
        help="Let the repaired model replace an existing file: the --save file, or the input "
             "model itself when --save (or the default path) names it. The new file is "
             "written completely before it replaces the old one.")] = False,
    labels: Annotated[str | None, typer.Option(
        "--labels", metavar="LIST", rich_help_panel=_MIT,
        help="Labels to mitigate (default: the flagged ones).")] = None,
    layer: Annotated[str | None, typer.Option(
        "--layer", rich_help_panel=_MIT,
        help="Layer for pruning/filtering (default: the input of the final classification "
             "layer).")] = None,
    test_data: Annotated[Path | None, typer.Option(
        "--test-data", rich_help_panel=_MIT,
        help="Held-out clean data for the before/after measurements (default: a seeded split "
             "of --data).")] = None,
    test_fraction: Annotated[float | None, typer.Option(
        "--test-fraction", rich_help_panel=_MIT,
        help="Share of --data held out when no --test-data is given (default 0.2).")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", rich_help_panel=_MIT, help="Unlearning: fine-tuning epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--learning-rate", rich_help_panel=_MIT, help="Unlearning: learning rate.")] = None,
    stamped_fraction: Annotated[float | None, typer.Option(
        "--stamped-fraction", rich_help_panel=_MIT,
        help="Unlearning: share of training images stamped with the reversed trigger.")
    ] = None,
    max_fraction: Annotated[float | None, typer.Option(
        "--max-fraction", rich_help_panel=_MIT,
        help="Pruning: most neurons of the layer to prune.")] = None,
    target_asr: Annotated[float | None, typer.Option(
        "--target-asr", rich_help_panel=_MIT,
        help="Pruning: stop once the reversed trigger's success is below this.")] = None,
    top_fraction: Annotated[float | None, typer.Option(
        "--top-fraction", rich_help_panel=_MIT,
        help="Filtering: share of the layer's neurons that score an input.")] = None,
    target_fpr: Annotated[float | None, typer.Option(
        "--target-fpr", rich_help_panel=_MIT,
        help="Filtering: false-positive rate on clean inputs.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, max=SEED_MAX, rich_help_panel=_MIT,
        help="Seed of the split and of random choices.")] = 0,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    input_shape: InputShapeOpt = None,
    channels_first: ChannelsOpt = None,
    clip_values: ClipOpt = None,
    subtract: SubtractOpt = None,
    divide: DivideOpt = None,
    output: OutputOpt = OutputKind.auto,
    device: DeviceOpt = None,
    x_key: XKeyOpt = None,
    y_key: YKeyOpt = None,
    max_samples: MaxSamplesOpt = None,
    data_layout: LayoutOpt = DataLayout.auto,
) -> None:
    """Mitigate the backdoor a scan flagged; save the repaired model and the measurements.

    Model flags not given (channel order, value range, preprocessing, output kind) default to
    what the scan report recorded.
    """
    from neuralcleanse import mitigation as mitigation_module
    from neuralcleanse.frontends import api
    from neuralcleanse.io.report import (
        MITIGATION_JSON,
        REPORT_JSON,
        atomic_write,
        render_directory,
    )

    # everything that can be checked without the model is checked first
    if report.is_file() and report.name != REPORT_JSON:
        raise CliError(f"--report takes a scan's folder or its {REPORT_JSON} (got "
                       f"{_qpath(report.name)})")
    report_dir = report if report.is_dir() else report.parent
    report_json = report / REPORT_JSON if report.is_dir() else report
    if not report_json.is_file():
        raise CliError(f"no scan report at {_qpath(report_json)}: give the folder a scan "
                       "wrote")
    chosen = _int_list(labels, "--labels") if labels is not None else None
    options = _mitigation_options(method, layer, dict(
        epochs=epochs, learning_rate=learning_rate, stamped_fraction=stamped_fraction,
        max_fraction=max_fraction, target_asr=target_asr, top_fraction=top_fraction,
        target_fpr=target_fpr, test_fraction=test_fraction))
    extra: dict[str, Any] = {}
    if "test_fraction" in options:
        extra["test_fraction"] = options.pop("test_fraction")
    if test_data is not None and not test_data.exists():
        raise CliError(f"--test-data {_qpath(test_data)} does not exist")
    if save is not None and method is Method.filtering:
        raise CliError("--save: filtering does not change the model, so there is no repaired "
                       "model to save")
    scan_result = ScanResult.from_json(report_json)
    for trigger in mitigation_module.select_triggers(scan_result, chosen):  # flagged, scanned
        if not (np.isfinite(trigger.mask).all() and np.isfinite(trigger.pattern).all()):
            raise CliError(f"the reversed trigger of label {trigger.label} in "
                           f"{_qpath(report_json)} has missing or non-finite values (null): "
                           "scan the model again")
    target = out or report_dir
    created = prepare_folder(target, "--out" if out is not None else "--report",
                             MITIGATE_OUTPUTS)
    try:
        if save is not None:
            _check_save(save, model, overwrite_model, explicit=True)
            created += prepare_folder(save.parent, "--save's folder")
        inputs = load_inputs(model, data, arch=arch, arch_kwargs=arch_kwargs,
                             trust_pickle=trust_pickle, input_shape=input_shape,
                             channels_first=channels_first, clip_values=clip_values,
                             subtract=subtract, divide=divide, output=output, device=device,
                             x_key=x_key, y_key=y_key, max_samples=max_samples,
                             data_layout=data_layout, seed=seed,
                             defaults=scan_result.model_info)
        if inputs.model.format in ("torchscript", "torch.export"):
            raise CliError(f"a {inputs.model.format} model can be scanned but not mitigated "
                           "(its layers cannot be hooked, trained and saved back in its format "
                           "here): save its state dict and use --arch")
        save_path: Path | None = None
        if method is not Method.filtering:
            keras = inputs.model.framework == "keras"
            save_path = _save_target(save or target / f"repaired_{method.value}"
                                     f"{'.keras' if keras else '.pt'}", keras)
            _check_save(save_path, model, overwrite_model, explicit=save is not None)
        if test_data is not None:
            test = load_data(test_data, x_key=x_key, y_key=y_key,
                             image_size=inputs.x.shape[1:3] if not inputs.channels_first
                             else inputs.x.shape[2:4])
            extra["x_test"], _ = to_layout(test.x, inputs.channels_first, data_layout.value)
            extra["y_test"] = test.y
        layer_spec: str | int | None = layer
        if layer is not None and re.fullmatch(r"-?[0-9]{1,9}", layer):
            layer_spec = int(layer)
        result = api.mitigate(
            inputs.model.model, inputs.x, inputs.y, scan_result, method=method.value,
            layer=layer_spec, labels=chosen, seed=seed, **inputs.wrap_options(), **extra,
            **options)
    except BaseException:
        remove_if_empty(created)
        raise
    mitigation_dict = result.to_dict()
    console = Console()
    if save_path is not None:
        saved = _save_model(result, save_path)
        mitigation_dict["saved_model"] = saved
        _say(console, f"repaired model: {saved}")
    atomic_write(target / MITIGATION_JSON, dumps(mitigation_dict))
    if not _same_file(report_json, target / REPORT_JSON):
        atomic_write(target / REPORT_JSON, report_json.read_bytes())
    paths = render_directory(target)
    _say(console, result.summary())
    _say(console, f"report: {paths.html}  (JSON: {target / MITIGATION_JSON})")
    raise typer.Exit(EXIT_CLEAN)


#: Mitigation flags: option name -> (flag, methods it applies to, kind, low, high, open ends).
_MITIGATION_FLAGS: dict[str, tuple[str, tuple[str, ...], type, float, float, str]] = {
    "epochs": ("--epochs", ("unlearning",), int, 1, MAX_EPOCHS, "[]"),
    "learning_rate": ("--learning-rate", ("unlearning",), float, 0.0, MAX_LEARNING_RATE, "(]"),
    "stamped_fraction": ("--stamped-fraction", ("unlearning",), float, 0.0, 1.0, "(]"),
    "max_fraction": ("--max-fraction", ("pruning",), float, 0.0, 1.0, "(]"),
    "target_asr": ("--target-asr", ("pruning",), float, 0.0, 1.0, "[]"),
    "top_fraction": ("--top-fraction", ("filtering",), float, 0.0, 1.0, "(]"),
    "target_fpr": ("--target-fpr", ("filtering",), float, 0.0, 1.0, "()"),
    "test_fraction": ("--test-fraction", ("unlearning", "pruning", "filtering"), float, 0.0,
                      1.0, "()"),
}


def _mitigation_options(method: Method, layer: str | None, given: dict[str, Any]
                        ) -> dict[str, Any]:
    """Check the mitigation flags that were given against their method and range."""
    if layer is not None and method is Method.unlearning:
        raise CliError("--layer applies to pruning and filtering (unlearning fine-tunes the "
                       "whole model)")
    options = {}
    for name, value in given.items():
        if value is None:
            continue
        flag, methods, kind, low, high, ends = _MITIGATION_FLAGS[name]
        if method.value not in methods:
            raise CliError(f"{flag} applies to --method {' or '.join(methods)}, not "
                           f"{method.value}")
        inside = (value > low if ends[0] == "(" else value >= low) and \
            (value < high if ends[1] == ")" else value <= high)
        if not inside:  # NaN is never inside
            what = "an integer" if kind is int else "a number"
            raise CliError(f"{flag} must be {what} in {ends[0]}{low:g}, {high:g}{ends[1]} "
                           f"(got {value!r})")
        options[name] = value
    return options


def _save_target(path: Path, keras: bool) -> Path:
    """The file the repaired model goes to: Keras adds ``.keras``; a link is followed."""
    if keras and path.suffix not in (".keras", ".h5"):
        path = path.with_name(path.name + ".keras")
    return path.resolve() if path.is_symlink() else path


def _check_save(path: Path, model: Path, overwrite: bool, explicit: bool) -> None:
    """Refuse to replace the input model or (an explicit ``--save``) any existing file."""
    shown = _qpath(path)
    if path.is_dir():
        raise CliError(f"--save {shown} is a folder: give the file to write")
    if _same_file(path, model) or path.resolve() == model.resolve():
        if not overwrite:
            where = f"--save {shown}" if explicit else f"the default save path {shown}"
            raise CliError(f"{where} is the input model, which the repaired model would "
                           "replace: save elsewhere, or add --overwrite-model if you mean it")
    elif explicit and (path.exists() or path.is_symlink()) and not overwrite:
        raise CliError(f"--save {shown} exists: choose another path, or add --overwrite-model "
                       "to replace it")


def _save_model(result: Any, path: Path) -> str:
    """Save the repaired model next to ``path`` and rename it over ``path`` once complete."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        written = Path(result.save(str(tmp)))
        os.replace(written, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(
        help="A report folder (with report.json) or a report.json file.", show_default=False)],
) -> None:
    """Render report.html and the trigger images again from report.json."""
    from neuralcleanse.io.report import render_directory

    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise CliError(f"{_qpath(path)} does not exist")
    if path.is_file() and path.name != "report.json":
        raise CliError(f"give a report folder or its report.json (got {_qpath(path.name)})")
    if (folder / "report.json").is_file():  # a bad report is refused before anything is written
        ScanResult.from_json(folder / "report.json")
    prepare_folder(folder, "the report folder", ("report.html", "triggers/"))
    paths = render_directory(folder)
    typer.echo(printable(f"report: {paths.html}"))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for the demo's report.")] = Path("neuralcleanse-demo"),
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX,
                                      help="Seed of everything random.")] = 0,
) -> None:
    """Plant a backdoor in a small digits classifier, find it, remove it, write the report.

    Uses scikit-learn's bundled 8x8 digits (no download); takes about a minute on 2 CPU cores.
    """
    from neuralcleanse.frontends.demo import run_demo

    created = prepare_folder(out, "--out", SCAN_OUTPUTS)
    try:
        run_demo(out, seed=seed, console=Console())
    except BaseException:
        remove_if_empty(created)
        raise


# -- entry point -----------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def printable(text: Any) -> str:
    r"""``text`` on one line with every control or format character shown as an escape.

    Runs of whitespace (newlines included) become one space; what remains of Unicode's
    categories C* (e.g. ESC of a terminal escape sequence, bidirectional overrides, lone
    surrogates from undecodable file names) is written as an escape such as ``\x1b``.
    """
    out = []
    for ch in _one_line(str(text)):
        if unicodedata.category(ch)[0] == "C":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _error(message: str) -> None:
    sys.stderr.write(f"neuralcleanse: error: {printable(message)}\n")
    sys.stderr.flush()


@contextmanager
def _short_warnings() -> Iterator[None]:
    """Show Python warnings as single lines on stderr."""
    package = str(Path(__file__).resolve().parents[1])  # the neuralcleanse package

    def show(message: Warning | str, category: type[Warning], filename: str, *_: Any,
             **__: Any) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning,
                                 FutureWarning)) and not filename.startswith(package):
            return  # notices about the frameworks' own APIs are not the user's concern
        sys.stderr.write(f"neuralcleanse: warning: {printable(message)}\n")

    previous = warnings.showwarning
    warnings.showwarning = show  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.showwarning = previous  # type: ignore[assignment]


def run(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("NEURALCLEANSE_DEBUG") == "1"
    try:
        with _short_warnings():
            rv = command.main(args=args, prog_name="neuralcleanse", standalone_mode=False)
    except ClickException as exc:
        if not exc.format_message():  # e.g. no arguments: the help was printed
            return EXIT_USAGE
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        _error(exc.format_message() + hint)
        return EXIT_USAGE
    except Interrupted as exc:
        sys.stderr.write(f"neuralcleanse: {printable(exc)}\n")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("neuralcleanse: interrupted\n")
        return EXIT_INTERRUPTED
    except (InputError, OSError) as exc:
        if _state["debug"]:
            raise
        text = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            text = f"{exc.strerror or exc}: {exc.filename}"
        _error(text or type(exc).__name__)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the last resort is one line, not a traceback
        if _state["debug"]:
            raise
        _error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the "
               "traceback")
        return EXIT_INTERNAL
    if isinstance(rv, int):
        return rv
    return EXIT_CLEAN


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
