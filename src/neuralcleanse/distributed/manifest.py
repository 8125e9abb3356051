"""The manifest of a scan over many models: read, checked entry by entry, before any work.

A manifest is a TOML or JSON file (or the same structure as a dict)::

    [defaults]                    # options every entry gets unless it sets them itself
    data = "val.npz"
    arch = "neuralcleanse.backends.torch.architectures:mnist_badnet"

    [search]                      # ScanConfig fields for every model (plus preset = "fast")
    steps = 300

    [[models]]
    model = "zoo/a.safetensors"   # paths are relative to the manifest's folder
    [[models]]
    name = "b-clean"              # default: the model file's stem
    model = "zoo/b.pt"
    clip_values = [0, 255]
    [[models]]
    folder = "more-models"        # one entry per model file in the folder, same options

An entry's keys are :data:`ENTRY_KEYS`: the model (``model``, or ``folder``), its ``data``,
``name``, and the loading options of ``neuralcleanse scan`` (``arch``, ``arch_kwargs``,
``trust_pickle``, ``subtract``/``divide``, ``output``, ``clip_values``, ``channels_first``,
``labels``, ``max_samples``, ``x_key``, ``y_key``, ``input_shape``, ``data_layout``,
``device``). Unknown keys, values of the wrong type, missing files and names that are not
unique are refused with one :class:`~neuralcleanse.core.errors.InputError` naming the entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.strict_json import read_json_file

#: Keys of one ``[[models]]`` entry.
ENTRY_KEYS = ("name", "model", "folder", "data", "arch", "arch_kwargs", "trust_pickle",
              "subtract", "divide", "output", "clip_values", "channels_first", "labels",
              "max_samples", "x_key", "y_key", "input_shape", "data_layout", "device")
#: Keys the ``[defaults]`` table may set (everything but the model itself and its name).
DEFAULT_KEYS = tuple(k for k in ENTRY_KEYS if k not in ("name", "model", "folder"))
TOP_KEYS = ("defaults", "search", "models")
#: Files a ``folder`` entry takes as models (others are skipped, as are hidden files).
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".pt", ".pth", ".pt2", ".ts", ".safetensors")
#: A model's name becomes its report folder: letters, digits, ``.``, ``_``, ``-``.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
OUTPUTS = ("auto", "logits", "probabilities")
LAYOUTS = ("auto", "nhwc", "nchw")
MAX_MANIFEST_BYTES = 16 * 2**20
#: The values of ``search`` that stand for ``None`` (as in a ``--config`` file).
NONE_WORDS = {"mini_batches": "all", "label_batch": "auto"}


@dataclass
class ModelSpec:
    """One model of the manifest, its files resolved and its options checked.

    Attributes:
        name: Unique name; the model's report goes to ``OUT/models/<name>``.
        model: The model file (absolute).
        data: The clean data (``.npz`` file or image folder, absolute).
        given: The model file as the manifest wrote it (echoed in the summary).
        options: The checked loading options (manifest spellings and types).
    """

    name: str
    model: Path
    data: Path
    given: str
    options: dict[str, Any] = field(default_factory=dict)

    def load_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the command line's ``load_inputs`` for this model.

        The loader takes the options as the command line spells them (text); the values are
        written so that they read back exactly (``repr`` of floats).
        """
        o = self.options

        def numbers(value: Any) -> str | None:
            if value is None:
                return None
            values = value if isinstance(value, list) else [value]
            return ",".join(repr(float(v)) for v in values)

        shape = o.get("input_shape")
        return dict(arch=o.get("arch"), trust_pickle=bool(o.get("trust_pickle", False)),
                    arch_kwargs=(json.dumps(o["arch_kwargs"]) if o.get("arch_kwargs")
                                 is not None else None),
                    input_shape=",".join(map(str, shape)) if shape is not None else None,
                    channels_first=o.get("channels_first"),
                    clip_values=numbers(o.get("clip_values")),
                    subtract=numbers(o.get("subtract")), divide=numbers(o.get("divide")),
                    x_key=o.get("x_key"), y_key=o.get("y_key"),
                    max_samples=o.get("max_samples"))


@dataclass
class Manifest:
    """The checked manifest: its models in order and its search settings.

    Attributes:
        models: One :class:`ModelSpec` per model, in manifest order (folders expanded).
        search: The ``[search]`` table (ScanConfig fields, and ``preset``).
        source: Where it came from (a file's path, or a description), for messages.
    """

    models: list[ModelSpec]
    search: dict[str, Any]
    source: str


def library_wording(text: str) -> str:
    """A message of the command line's loader with its flags named as manifest keys.

    ``--clip-values`` becomes ``clip_values`` (the key of the manifest that sets it).
    """
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), text)


def read_manifest(manifest: Any) -> Manifest:
    """Read and check a manifest: a TOML/JSON file, a dict, or ``(folder, data[, options])``.

    Relative paths are resolved against the manifest file's folder (the working directory
    for a dict or a folder shorthand). Every entry is checked and every file looked up before
    this returns; nothing is loaded.

    Raises:
        InputError: Naming the entry and the key at fault.
    """
    if isinstance(manifest, tuple):
        if len(manifest) not in (2, 3):
            raise InputError("a folder shorthand is (folder_of_models, data_file) or "
                             "(folder_of_models, data_file, options)")
        options = manifest[2] if len(manifest) == 3 else {}
        if not isinstance(options, Mapping):
            raise InputError("the options of a folder shorthand must be a dict")
        data = {"models": [{**options, "folder": _path_text(manifest[0], "folder"),
                            "data": _path_text(manifest[1], "data")}]}
        return _check(data, Path.cwd(), "the folder shorthand")
    if isinstance(manifest, Mapping):
        return _check(dict(manifest), Path.cwd(), "the manifest")
    if isinstance(manifest, (str, Path)):
        path = Path(manifest).expanduser()
        return _check(_read_file(path), path.resolve().parent, repr(str(path)))
    raise InputError("manifest must be a TOML or JSON file, a dict, or a (folder_of_models, "
                     f"data_file) pair (got {type(manifest).__name__})")


def _path_text(value: Any, what: str) -> str:
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InputError(f"the {what} of a folder shorthand must be a path")
    return value


def _read_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise InputError(f"manifest {str(path)!r} must be a .toml or .json file")
    if not path.is_file():
        raise InputError(f"manifest {str(path)!r} does not exist or is not a file")
    if suffix == ".json":
        return read_json_file(path)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"manifest {str(path)!r} is larger than 16 MiB: not a manifest")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(f"manifest {str(path)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"manifest {str(path)!r} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError):
        raise InputError(f"manifest {str(path)!r} is not usable TOML (nested too deeply or "
                         "a value too long)") from None


def _check(data: Any, base: Path, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise InputError(f"{source} must be a table with a list of [[models]]")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; a "
                         f"manifest has {', '.join(TOP_KEYS)}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InputError(f"{source}: defaults must be a table of options")
    where = f"{source}, [defaults]"
    _unknown_keys(defaults, DEFAULT_KEYS, where)
    defaults = {k: _value(k, v, where) for k, v in defaults.items()}
    search = data.get("search", {})
    if not isinstance(search, dict):
        raise InputError(f"{source}: search must be a table of ScanConfig settings")
    search = search_settings(search, f"{source}, [search]")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{source} has no models: add [[models]] entries (a list under "
                         "\"models\" in JSON)")
    specs: list[ModelSpec] = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}, model entry {i}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be a table of options")
        if isinstance(entry.get("name"), str):
            where += f" ({entry['name']!r})"
        _unknown_keys(entry, ENTRY_KEYS, where)
        merged = {**defaults, **{k: _value(k, v, where) for k, v in entry.items()}}
        specs.extend(_entry_specs(merged, base, where))
    seen: dict[str, str] = {}
    for spec in specs:
        key = spec.name.lower()  # folders of names differing in case collide on some disks
        if key in seen:
            raise InputError(f"{source}: two models are named {spec.name!r} ({seen[key]} and "
                             f"{spec.given}); give each a unique name")
        seen[key] = spec.given
    return Manifest(models=specs, search=search, source=source)


def _unknown_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in table if k not in allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid "
                         f"keys are {', '.join(allowed)}")


def _entry_specs(entry: dict[str, Any], base: Path, where: str) -> list[ModelSpec]:
    if ("model" in entry) == ("folder" in entry):
        raise InputError(f"{where} needs either model (a model file) or folder (a folder of "
                         "model files)")
    if "data" not in entry:
        raise InputError(f"{where} has no data (a .npz file or an image folder), and "
                         "[defaults] gives none")
    data = _resolve(entry["data"], base)
    if not data.exists():
        raise InputError(f"{where}: data path {str(data)!r} does not exist")
    options = {k: v for k, v in entry.items() if k not in ("name", "model", "folder", "data")}
    if "folder" in entry:
        if "name" in entry:
            raise InputError(f"{where}: a folder entry names its models after their files; "
                             "drop name (or list the models one by one)")
        folder = _resolve(entry["folder"], base)
        if not folder.is_dir():
            raise InputError(f"{where}: folder {str(folder)!r} does not exist or is not a "
                             "folder")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in MODEL_SUFFIXES
                       and not f.name.startswith(".") and f.is_file())
        if not files:
            raise InputError(f"{where}: folder {str(folder)!r} holds no model files "
                             f"({', '.join(MODEL_SUFFIXES)})")
        stems = [f.stem for f in files]
        return [ModelSpec(name=default_name(f.stem if stems.count(f.stem) == 1 else f.name),
                          model=f, data=data, given=str(Path(entry["folder"]) / f.name),
                          options=dict(options)) for f in files]
    model = _resolve(entry["model"], base)
    if not model.is_file():
        raise InputError(f"{where}: model file {str(model)!r} does not exist or is not a file")
    name = entry.get("name")
    if name is None:
        name = default_name(model.stem)
    elif not NAME.fullmatch(name):
        raise InputError(f"{where}: name {name!r} must be 1-100 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit (it names the report folder)")
    return [ModelSpec(name=name, model=model, data=data, given=entry["model"],
                      options=options)]


def default_name(stem: str) -> str:
    """A model's name from its file name: other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:100]
    return name or "model"


def _resolve(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else base / path).absolute()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _value(key: str, v: Any, where: str) -> Any:
    """``v`` checked as the value of ``key`` (returned in a canonical form)."""
    def refuse(wanted: str) -> InputError:
        return InputError(f"{where}: {key} must be {wanted} (got {_shown(v)})")

    if key in ("name", "model", "folder", "data", "x_key", "y_key", "device"):
        if not isinstance(v, str) or not v:
            raise refuse("a non-empty string")
    elif key == "arch":
        if not isinstance(v, str) or not re.fullmatch(r"[\w.]+:[\w.]+", v):
            raise refuse("'package.module:factory'")
    elif key == "arch_kwargs":
        if not isinstance(v, dict):
            raise refuse("a table of keyword arguments")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise refuse("a table of JSON values (strings, finite numbers, booleans, "
                         "lists, tables)") from None
    elif key in ("trust_pickle", "channels_first"):
        if not isinstance(v, bool):
            raise refuse("true or false")
    elif key in ("subtract", "divide"):
        values = v if isinstance(v, list) else [v]
        if not values or not all(_is_number(x) for x in values):
            raise refuse("a finite number or a list of them (one per channel)")
        from neuralcleanse.frontends.cli.inputs import preprocessing_values

        text = ",".join(repr(float(x)) for x in values)
        try:
            preprocessing_values(text if key == "subtract" else None,
                                 text if key == "divide" else None)
        except InputError as exc:  # the command line's CliError
            raise InputError(f"{where}: {library_wording(str(exc))}") from None
    elif key in ("output", "data_layout"):
        allowed = OUTPUTS if key == "output" else LAYOUTS
        if v not in allowed:
            raise refuse(" or ".join(map(repr, allowed)))
    elif key == "clip_values":
        if not isinstance(v, list) or len(v) != 2 or not all(_is_number(x) for x in v):
            raise refuse("[min, max], two finite numbers")
        from neuralcleanse.frontends.cli.inputs import clip_range

        try:
            clip_range(f"{float(v[0])!r},{float(v[1])!r}", None)
        except InputError as exc:  # the command line's CliError
            raise InputError(f"{where}: {library_wording(str(exc))}") from None
    elif key == "labels":
        if not isinstance(v, list) or not v or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v):
            raise refuse("a non-empty list of label numbers (integers >= 0)")
        if len(set(v)) != len(v):
            raise refuse("a list of distinct labels")
    elif key == "max_samples":
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise refuse("an integer >= 1")
    elif key == "input_shape":
        if isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                       for d in v):
            v = ",".join(map(str, v))
        if not isinstance(v, str):
            raise refuse("a list of 2 or 3 positive integers, e.g. [1, 28, 28]")
        from neuralcleanse.frontends.cli.options import parse_shape

        try:
            v = list(parse_shape(v) or ())
        except InputError as exc:  # the command line's CliError
            raise InputError(f"{where}: {library_wording(str(exc))}") from None
    return v


def _shown(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except ValueError:
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def search_settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``[search]`` table (or the ``config`` argument as a dict) with its names checked.

    Keys are :class:`ScanConfig` fields (dashes allowed) and ``preset``; ``mini_batches =
    "all"`` and ``label_batch = "auto"`` stand for ``None``. The values are checked by
    :func:`build_config`.
    """
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = str(key).replace("-", "_")
        if name in NONE_WORDS and isinstance(value, str) \
                and value.strip().lower() == NONE_WORDS[name]:
            value = None
        out[name] = value
    unknown = sorted(set(out) - set(ScanConfig.field_names()) - {"preset"})
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; valid "
                         f"settings are preset, {', '.join(ScanConfig.field_names())}")
    return out


def build_config(search: dict[str, Any], config: Any) -> ScanConfig:
    """The run's search settings: the manifest's ``[search]``, then ``config`` over it.

    ``config`` is ``None``, a dict of settings (each replaces the manifest's), or a
    :class:`ScanConfig`, which is used as it is.

    Raises:
        InputError: Naming the setting and where it was given.
    """
    if isinstance(config, ScanConfig):
        return config
    if config is not None and not isinstance(config, Mapping):
        raise InputError("config must be a ScanConfig or a dict of ScanConfig settings (got "
                         f"{type(config).__name__})")
    given = search_settings(config or {}, "config")
    settings = {**search, **given}
    preset = settings.pop("preset", "paper")
    try:
        return ScanConfig.preset(preset, **settings)
    except (InputError, TypeError, ValueError) as exc:
        text = str(exc)
        name = next((k for k in [*ScanConfig.field_names(), "preset"]
                     if text.startswith(f"{k} ") or text.startswith(f"unknown {k}")), None)
        where = "config" if name in given else "the manifest's [search]"
        raise InputError(f"{where}: {text}") from None
