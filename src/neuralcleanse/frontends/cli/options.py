"""The flags shared by several commands, the small parsers of flag values, and settings files.

Every parser raises :class:`~neuralcleanse.frontends.cli.messages.CliError` with a one-line
message that names the flag. Ranges that the library checks (the search settings) are left to
it: :func:`build_config` only says which flag or file held a refused value.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from neuralcleanse.core.checks import MAX_INPUT_VALUE
from neuralcleanse.core.config import ScanConfig
from neuralcleanse.frontends.cli.messages import CliError, qpath, quote

#: Labels given with ``--labels`` must lie in ``[0, MAX_LABEL]`` (checked before a range is
#: expanded, so ``0-999999999999`` is refused at once instead of filling the memory).
MAX_LABEL = 999_999
#: Largest ``--config`` file read (settings files are a few hundred bytes).
MAX_CONFIG_BYTES = 2**20
#: Each side of ``--input-shape`` is at most this, and one input at most ``MAX_INPUT_VALUES``.
MAX_SIDE = 65_536
MAX_INPUT_VALUES = 2**26
#: Largest magnitude of a value range or preprocessing constant: it stays finite in float32
#: (``float32`` overflows at 3.4e38) with room for the arithmetic of stamping.
MAX_INPUT_MAGNITUDE = MAX_INPUT_VALUE
#: The value of a flag that was not given (``None`` can be a given value, e.g. ``all``).
UNSET = "unset"


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


class OutputFormat(str, Enum):
    """What ``scan`` prints on stdout."""

    text = "text"
    json = "json"


class FailOn(str, Enum):
    """Which verdict makes ``scan`` exit 1: ``backdoor`` only, also ``suspicious``, or none."""

    backdoor = "backdoor"
    suspicious = "suspicious"
    never = "never"


class VerdictRule(str, Enum):
    """The rule that turns the anomaly indices into a verdict (``ScanConfig.verdict``)."""

    confirmed = "confirmed"
    paper = "paper"


class Precision(str, Enum):
    """Number format of the model's passes in the trigger search (``ScanConfig.precision``)."""

    fp32 = "fp32"
    bf16 = "bf16"


class Method(str, Enum):
    """Mitigation methods."""

    unlearning = "unlearning"
    pruning = "pruning"
    filtering = "filtering"


MODEL_PANEL = "Model"
DATA_PANEL = "Data"
SEARCH_PANEL = "Search settings (defaults: the paper's; see also --config)"
OUT_PANEL = "Output"
MITIGATION_PANEL = "Mitigation options"

ModelArg = Annotated[Path, typer.Argument(
    help="Model file: .keras/.h5 (Keras), a TorchScript file, a torch.export archive (.pt2), "
         "PyTorch weights as .safetensors (recommended) or a state dict (both with --arch), "
         "or a pickled module (with --trust-pickle). The format is read from the content; "
         "nothing in the file is run unless --trust-pickle is given (see SECURITY.md).",
    show_default=False)]
ArchOpt = Annotated[str | None, typer.Option(
    "--arch", metavar="MODULE:FACTORY", rich_help_panel=MODEL_PANEL,
    help="For a state dict: the function that builds the network, e.g. "
         "neuralcleanse.backends.torch.architectures:mnist_badnet.")]
ArchKwargsOpt = Annotated[str | None, typer.Option(
    "--arch-kwargs", metavar="JSON", rich_help_panel=MODEL_PANEL,
    help='Keyword arguments for the --arch factory, as JSON, e.g. \'{"nb_classes": 43}\'.')]
TrustPickleOpt = Annotated[bool, typer.Option(
    "--trust-pickle", rich_help_panel=MODEL_PANEL,
    help="Trust the model file: allow what RUNS CODE STORED IN THE FILE: a pickled full "
         "PyTorch module, Keras Lambda layers, a torch.export archive that cannot be verified "
         "(custom objects, AOTInductor, arbitrary pickles). Only for files you trust.")]
InputShapeOpt = Annotated[str | None, typer.Option(
    "--input-shape", metavar="DIMS", rich_help_panel=MODEL_PANEL,
    help="Shape of one input in the model's layout, e.g. 1,28,28 (channels first) or 32,32,3; "
         "image folders are resized to it, other data must match it. Default: the model's "
         "own (Keras) or the data's.")]
ChannelsOpt = Annotated[bool | None, typer.Option(
    "--channels-first/--channels-last", rich_help_panel=MODEL_PANEL, show_default=False,
    help="Channel order the model takes. Default: the model's own: a Keras model's layers' "
         "data format (whichever backend runs Keras, TensorFlow or torch), channels first for "
         "other PyTorch models; mitigate takes the scan report's.")]
ClipOpt = Annotated[str | None, typer.Option(
    "--clip-values", metavar="MIN,MAX", rich_help_panel=MODEL_PANEL,
    help="Raw input value range, e.g. 0,255. Default: 0,1 or 0,255, whichever the data "
         "fits.")]
SubtractOpt = Annotated[str | None, typer.Option(
    "--subtract", metavar="V[,V...]", rich_help_panel=MODEL_PANEL,
    help="Preprocessing applied after the trigger is stamped: (x - SUBTRACT) / DIVIDE. One "
         "value, or one per channel.")]
DivideOpt = Annotated[str | None, typer.Option(
    "--divide", metavar="V[,V...]", rich_help_panel=MODEL_PANEL,
    help="Divisor of the preprocessing (see --subtract).")]
OutputOpt = Annotated[OutputKind, typer.Option(
    "--output", rich_help_panel=MODEL_PANEL, case_sensitive=False,
    help="What the model returns; auto checks whether its outputs are probability rows.")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", rich_help_panel=MODEL_PANEL,
    help="PyTorch device, e.g. cpu or cuda (default cpu).")]
DataOpt = Annotated[Path, typer.Option(
    "--data", "-d", rich_help_panel=DATA_PANEL, show_default=False,
    help="Clean labelled images: an .npz file or a folder with one sub-folder per class.")]
XKeyOpt = Annotated[str | None, typer.Option(
    "--x-key", rich_help_panel=DATA_PANEL,
    help="Key of the images in the .npz (default: detected).")]
YKeyOpt = Annotated[str | None, typer.Option(
    "--y-key", rich_help_panel=DATA_PANEL,
    help="Key of the labels in the .npz (default: detected).")]
MaxSamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", min=1, rich_help_panel=DATA_PANEL,
    help="Use at most this many images: a seeded (--seed), class-balanced subsample.")]
PrecisionOpt = Annotated[Precision | None, typer.Option(
    "--precision", rich_help_panel=SEARCH_PANEL, case_sensitive=False, show_default=False,
    help="Number format of the model's forward and backward passes in the search: fp32 (the "
         "default) or bf16 (PyTorch models: bfloat16 autocast; the trigger and its optimiser "
         "stay fp32; 1.1-2x faster on a CPU with AVX512-BF16, most on convolution-heavy "
         "models; see docs/speed.md).")]
FormatOpt = Annotated[OutputFormat, typer.Option(
    "--format", rich_help_panel=OUT_PANEL, case_sensitive=False,
    help="What stdout carries: text (the summary table and verdict) or json (exactly one JSON "
         "document: report.json without the trigger arrays, plus 'report' with the paths of "
         "report.json and report.html; the other lines go to stderr).")]
FailOnOpt = Annotated[FailOn, typer.Option(
    "--fail-on", rich_help_panel=OUT_PANEL, case_sensitive=False,
    help="Which verdict exits 1: backdoor (only a BACKDOOR verdict), suspicious (a BACKDOOR "
         "or a SUSPICIOUS verdict: the strict gate) or never (exit 0 whatever the verdict, "
         "for pipelines that only collect reports). Errors still exit 2, 3 or 130.")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUT_PANEL,
    help="Print nothing but warnings and errors (on stderr), and the JSON document with "
         "--format json; no progress unless --progress is given.")]
LayoutOpt = Annotated[DataLayout, typer.Option(
    "--data-layout", rich_help_panel=DATA_PANEL, case_sensitive=False,
    help="Channel axis of 4-D data; auto guesses it and moves it where the model wants it.")]


# -- small parsers ---------------------------------------------------------------------------
def parse_numbers(text: str, flag: str, count: int | None = None) -> list[float]:
    """Comma-separated finite numbers (``count`` of them when given)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise CliError(f"{flag} takes comma-separated numbers (got {quote(text)})") from None
    if not values or (count is not None and len(values) != count):
        want = f"{count} comma-separated numbers" if count else "comma-separated numbers"
        raise CliError(f"{flag} takes {want} (got {quote(text)})")
    if not all(math.isfinite(v) for v in values):
        raise CliError(f"{flag} values must be finite (got {quote(text)})")
    return values


def parse_int_list(text: str, flag: str) -> list[int]:
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
            raise CliError(f"{usage} (got {quote(text)})") from None
        if not 0 <= first <= MAX_LABEL or not 0 <= last <= MAX_LABEL:
            raise CliError(f"{usage} (got {quote(part)})")
        if last < first:
            raise CliError(f"{flag}: the range {quote(part)} runs backwards; write "
                           f"{last}-{first}")
        out.update(range(first, last + 1))
    if not out:
        raise CliError(f"{flag} is empty")
    return sorted(out)


def parse_auto_int(text: str | None, flag: str, word: str) -> int | None | str:
    """Parse ``N`` or the word meaning ``None``; returns :data:`UNSET` when not given."""
    if text is None:
        return UNSET
    if text.strip().lower() == word:
        return None
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{flag} takes an integer or {word!r} (got {quote(text)})") from None


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """The dimensions of ``--input-shape`` (``1,28,28``, ``28x28``, ``(32, 32, 3)``)."""
    if text is None:
        return None
    parts = text.lower().replace("x", ",").replace(" ", "").strip("()").split(",")
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise CliError(f"--input-shape takes integers like 1,28,28 (got {quote(text)})"
                       ) from None
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise CliError(f"--input-shape takes 2 or 3 positive integers (got {quote(text)})")
    if max(dims) > MAX_SIDE or math.prod(dims) > MAX_INPUT_VALUES:
        raise CliError(f"--input-shape {quote(text)} is too large: each side at most "
                       f"{MAX_SIDE} and at most {MAX_INPUT_VALUES} values per input")
    return dims


def parse_json(text: str, what: str, hint: str = "write a finite number") -> Any:
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


# -- settings files and the search settings --------------------------------------------------
def read_config_file(path: Path) -> dict[str, Any]:
    """Read search settings from a JSON or TOML file (a flat table, or a ``[scan]`` table).

    Keys are :class:`ScanConfig` field names (dashes allowed); ``mini_batches = "all"`` and
    ``label_batch = "auto"`` stand for ``None``. The values are checked by
    :func:`build_config` (that is, by :class:`ScanConfig`).
    """
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise CliError(f"--config takes a .json or .toml file (got {qpath(path)})")
    if not path.exists():
        raise CliError(f"config file {qpath(path)} does not exist")
    if not path.is_file():
        raise CliError(f"config file {qpath(path)} is not a file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CliError(f"config file {qpath(path)} is larger than 1 MiB: not a settings "
                       "file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CliError(f"config file {qpath(path)} is not UTF-8 text") from None
    name = qpath(path.name)
    if suffix == ".toml":
        data = _toml(text, name)
    else:
        data = parse_json(text, name, 'write a finite number; for norm, the string "inf"')
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
        shown = ", ".join(quote(k, 30) for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CliError(f"{name}: unknown setting(s) {shown}{more}; valid settings are "
                       f"{', '.join(ScanConfig.field_names())}")
    return out


def _toml(text: str, name: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{name} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else \
            "it holds a value too long to read"
        raise CliError(f"{name} is not usable TOML: {why}") from None


def build_config(preset: Preset, config_file: Path | None, flags: dict[str, Any]) -> ScanConfig:
    """Settings from the preset, then the config file, then the flags given on the line.

    :class:`ScanConfig` checks every value; a refusal names the flag or the file that held it.
    """
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    given = {k: v for k, v in flags.items() if not (isinstance(v, str) and v == UNSET)}
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
            raise CliError(f"{qpath(config_file.name)}: {text}") from None
        raise CliError(f"bad search setting: {text}") from None
