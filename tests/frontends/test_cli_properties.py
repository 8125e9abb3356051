"""Property tests of the command line's parsing and validation stages.

Random option values (numbers with infinities, NaN, huge and negative values, random text),
random settings files in TOML and JSON (wrong types, nesting, non-standard constants) and
random report files go through the parsers and through ``cli.run``. Each either works (the
parsed value is checked against an independent oracle) or fails with an ``InputError`` / exit 2
and a one-line message without control characters: never a traceback, never exit 3.

No property starts a real scan: ``cli.run`` gets a model file that is a few bytes of text, so a
run whose options are all valid stops when loading the model (exit 2 as well).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from neuralcleanse.core.config import ScanConfig
from neuralcleanse.core.errors import InputError
from neuralcleanse.core.results import LabelResult, ScanResult
from neuralcleanse.frontends import cli
from neuralcleanse.frontends.cli import options as cli_options
from neuralcleanse.io.report import write_report

PROPERTY = settings(deadline=None, database=None,
                    derandomize=os.environ.get("NEURALCLEANSE_HYPOTHESIS_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

#: Examples per property (2,110 in all).
EXAMPLES = {"config_values": 500, "config_files": 300, "config_text": 150, "int_list": 250,
            "int_list_text": 150, "numbers": 150, "shape": 150, "run_scan": 160,
            "run_mitigate": 100, "run_report": 150}

#: The documented ranges of ScanConfig (its docstring and the README), written out here so a
#: change of the code's table is caught: (low, high, low_open).
INT_RANGES = {"steps": (1, 1_000_000), "mini_batches": (1, 100_000), "batch_size": (1, 65_536),
              "patience": (1, 1_000_000), "early_stop_patience": (1, 1_000_000),
              "seed": (0, 2**32 - 1), "label_batch": (1, 100_000), "confirm_seeds": (1, 16)}
FLOAT_RANGES = {"learning_rate": (0.0, 10.0), "init_cost": (0.0, 1e6),
                "attack_success_threshold": (0.0, 1.0), "cost_multiplier": (1.0, 1000.0),
                "early_stop_threshold": (0.0, 1.0), "anomaly_threshold": (0.0, 1e6),
                "memory_budget_mb": (0.0, 2.0**20), "confirm_margin": (0.0, 1e6),
                "max_norm_ratio": (0.0, 1.0), "small_norm_ratio": (0.0, 1.0)}
#: Float settings whose low end is allowed (the others are open there).
LOW_CLOSED = {"confirm_margin", "small_norm_ratio"}
VERDICT_RULES = ("confirmed", "paper")
PRECISIONS = ("fp32", "bf16")
NONE_ALLOWED = {"mini_batches", "label_batch"}
NORMS = {"1": 1, "l1": 1, "2": 2, "l2": 2, "inf": math.inf, "linf": math.inf, "max": math.inf}

EDGES = [0, 1, 2, -1, -0.0, 0.0, 1.0, 10.0, 10.000001, 1e6, 1e6 + 1, 2**20, 2**20 + 1,
         100_000, 100_001, 65_536, 65_537, 1_000_000, 1_000_001, 2**32 - 1, 2**32, 2**63,
         10**30, -10**30, 1e308, 5e-324, 0.99, 1.5, 1000.0, 1000.5]
NUMBERS = st.one_of(st.integers(-3, 12), st.integers(), st.integers(-10**40, 10**40),
                    st.floats(), st.sampled_from(EDGES))
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["all", "auto", "inf", "L2", " max ", "1e3", "nan"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
#: Values of the right kind, so that about half the examples are valid settings.
PLAUSIBLE = st.one_of(st.integers(0, 300), st.floats(0.0, 2.0), st.booleans(), st.none(),
                      st.sampled_from([*NORMS, " L1 ", 1, 2, math.inf, 1e-3, 0.5, 5, 25,
                                       "confirmed", " Paper ", "PAPER", "median", "bf16",
                                       " FP32", "fp16"]))
SETTING = st.one_of(PLAUSIBLE, PLAUSIBLE, VALUES)
CONTROL = {chr(c) for c in range(32)} | {"\x7f", "\x9b", "\u202e", "\u2028"}


def one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message
    assert not CONTROL & set(message), repr(message)


def refused(exc: BaseException, *names: str) -> None:
    """A refusal: an InputError with a one-line message naming one of ``names``."""
    assert isinstance(exc, InputError), repr(exc)
    event("refused")
    text = cli.printable(str(exc))
    one_line(text)
    assert not names or any(n in text for n in names), text


def stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("neuralcleanse: warning")]
    assert len(lines) == 1, err
    one_line(lines[0])
    assert lines[0].startswith("neuralcleanse: error: ") and "internal error" not in lines[0]
    return lines[0]


# -- ScanConfig --------------------------------------------------------------------------------
def expected_ok(field: str, value: Any) -> bool:
    """Whether ``value`` is a valid ``field`` by the documented rules."""
    if field in NONE_ALLOWED and value is None:
        return True
    if field in INT_RANGES:
        low, high = INT_RANGES[field]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if field in FLOAT_RANGES:
        low, high = FLOAT_RANGES[field]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return (low <= value if field in LOW_CLOSED else low < value) and value <= high
    if field == "norm":
        if isinstance(value, str):
            return value.strip().lower() in NORMS
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value in (1, 2, math.inf)
    if field == "verdict":
        return isinstance(value, str) and value.strip().lower() in VERDICT_RULES
    if field == "precision":
        return isinstance(value, str) and value.strip().lower() in PRECISIONS
    return isinstance(value, bool)  # early_stop, progress


@settings(PROPERTY, max_examples=EXAMPLES["config_values"])
@given(field=st.sampled_from(ScanConfig.field_names()), value=SETTING)
def test_scan_config_takes_valid_values_and_refuses_the_rest(field: str, value: Any) -> None:
    try:
        cfg = ScanConfig(**{field: value})
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        refused(exc, field)
        assert not expected_ok(field, value), (field, value)
        return
    assert expected_ok(field, value), (field, value)
    event("accepted")
    got = getattr(cfg, field)
    if field == "norm":
        want = NORMS[value.strip().lower()] if isinstance(value, str) else value
        assert got == want and got in (1, 2, math.inf)
    elif field in ("verdict", "precision"):
        assert got == value.strip().lower()
    elif value is None:
        assert got is None
    elif field in INT_RANGES:
        assert type(got) is int and got == value
    elif field in FLOAT_RANGES:
        assert type(got) is float and math.isfinite(got) and got == value
    else:
        assert got is value
    json.dumps(cfg.to_dict(), allow_nan=False)  # every accepted config is valid JSON


# -- settings files ----------------------------------------------------------------------------
KEYS = st.one_of(st.sampled_from(ScanConfig.field_names()),
                 st.sampled_from(ScanConfig.field_names()),
                 st.sampled_from([n.replace("_", "-") for n in ScanConfig.field_names()]),
                 st.sampled_from(["scan", "stepz", "\x1b[31m", "", "steps\n"]),
                 st.text(max_size=6))


def toml_value(value: Any) -> str | None:
    """``value`` as a TOML value, or ``None`` when TOML cannot say it (null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        items = [toml_value(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(value, dict):
        items = [(json.dumps(k), toml_value(v)) for k, v in value.items()]
        if any(v is None for _, v in items):
            return None
        return "{" + ", ".join(f"{k} = {v}" for k, v in items) + "}"
    return None


def toml_text(table: dict[str, Any]) -> str:
    lines = []
    for key, value in table.items():
        text = toml_value(value)
        if text is not None:
            lines.append(f"{json.dumps(key)} = {text}")
    return "\n".join(lines) + "\n"


def normalised(value: Any, key: str) -> Any:
    """What read_config_file should return for ``key = value`` (the words for None)."""
    word = {"mini_batches": "all", "label_batch": "auto"}.get(key)
    if word and isinstance(value, str) and value.strip().lower() == word:
        return None
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(PROPERTY, max_examples=EXAMPLES["config_files"])
@given(table=st.dictionaries(KEYS, SETTING, max_size=4), toml=st.booleans(),
       nested=st.booleans())
def test_config_files_are_read_exactly_or_refused(table: dict[str, Any], toml: bool,
                                                  nested: bool, tmp_path: Path) -> None:
    path = tmp_path / ("c.toml" if toml else "c.json")
    if toml:
        written = {k: v for k, v in table.items() if toml_value(v) is not None}
        path.write_text(("[scan]\n" if nested else "") + toml_text(written), encoding="utf-8")
    else:
        written = table
        path.write_text(json.dumps({"scan": table} if nested else table), encoding="utf-8")
    try:
        read = cli_options.read_config_file(path)
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        return
    # accepted: exactly the keys written (dashes as underscores; the last spelling of a key
    # wins) with the values written; a lone "scan" table is the table itself
    if not nested and list(written) == ["scan"] and isinstance(written["scan"], dict):
        written = written["scan"]
    expected: dict[str, Any] = {}
    for key, value in written.items():
        expected[key.replace("-", "_")] = value
    event("read")
    assert set(read) <= set(ScanConfig.field_names())
    assert read.keys() == expected.keys()
    for name, value in expected.items():
        assert same(read[name], normalised(value, name)), (name, value, read[name])
        if not toml:
            assert not (isinstance(value, float) and not math.isfinite(value))
    try:
        cfg = cli_options.build_config(cli_options.Preset.paper, path, {})
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        assert not all(expected_ok(k, v) for k, v in read.items())
        return
    event("built a config")
    for key, value in read.items():
        assert expected_ok(key, value)
        if key != "norm" and value is not None:
            assert getattr(cfg, key) == value


@settings(PROPERTY, max_examples=EXAMPLES["config_text"])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from([
    '{"steps": NaN}', "{}", "[scan]\n", "steps = 3\nsteps = 3", '{"scan": []}', "a.b.c = 1",
    "[[scan]]\nsteps = 1", "\ufeffsteps = 2"]), toml=st.booleans())
def test_random_config_text_is_read_or_refused(text: str, toml: bool, tmp_path: Path) -> None:
    path = tmp_path / ("c.toml" if toml else "c.json")
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        read = cli_options.read_config_file(path)
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        return
    assert isinstance(read, dict) and set(read) <= set(ScanConfig.field_names())


# -- small parsers -----------------------------------------------------------------------------
LABEL = st.one_of(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30),
                  st.integers(-5, 5), st.sampled_from([cli_options.MAX_LABEL,
                                                       cli_options.MAX_LABEL + 1,
                                                       10**12, 10**30]))


@st.composite
def label_part(draw: Any) -> tuple[int, int | None]:
    """``n``, ``lo-hi`` with ``hi >= lo``, or ``lo-hi`` with any ``hi``."""
    lo = draw(LABEL)
    kind = draw(st.sampled_from(["single", "range", "any"]))
    if kind == "single":
        return lo, None
    return lo, (lo + draw(st.integers(0, 5)) if kind == "range" else draw(LABEL))


@settings(PROPERTY, max_examples=EXAMPLES["int_list"])
@given(parts=st.lists(label_part(), max_size=4), spaces=st.booleans())
def test_int_list_matches_the_ranges_written(parts: list[tuple[int, int | None]],
                                             spaces: bool) -> None:
    text = (", " if spaces else ",").join(f"{lo}" if hi is None else f"{lo}-{hi}"
                                          for lo, hi in parts)
    valid = bool(parts) and all(
        lo >= 0 and (hi is None or hi >= lo) and max(lo, hi or 0) <= cli_options.MAX_LABEL
        for lo, hi in parts)
    try:
        got = cli_options.parse_int_list(text, "--labels")
    except Exception as exc:  # noqa: BLE001
        refused(exc, "--labels")
        assert not valid, text
        return
    assert valid, text
    event("parsed")
    want: set[int] = set()
    for lo, hi in parts:
        want.update(range(lo, (lo if hi is None else hi) + 1))
    assert got == sorted(want)


@settings(PROPERTY, max_examples=EXAMPLES["int_list_text"])
@given(text=st.text(alphabet="0123456789-, x\t+_٣", max_size=20) | st.text(max_size=10))
def test_int_list_of_any_text(text: str) -> None:
    try:
        got = cli_options.parse_int_list(text, "--labels")
    except Exception as exc:  # noqa: BLE001
        refused(exc, "--labels")
        return
    assert got and got == sorted(set(got))
    assert all(type(t) is int and 0 <= t <= cli_options.MAX_LABEL for t in got)


@settings(PROPERTY, max_examples=EXAMPLES["numbers"])
@given(values=st.lists(st.floats() | st.integers(-10**5, 10**5), max_size=4),
       count=st.none() | st.integers(1, 3),
       junk=st.none() | st.text(max_size=6))
def test_numbers_are_parsed_exactly_or_refused(values: list[float], count: int | None,
                                               junk: str | None) -> None:
    text = ",".join(repr(float(v)) for v in values) + (junk or "")
    try:
        got = cli_options.parse_numbers(text, "--clip-values", count)
    except Exception as exc:  # noqa: BLE001
        refused(exc, "--clip-values")
        if junk is None:
            assert not values or any(not math.isfinite(v) for v in values) or \
                (count is not None and len(values) != count)
        return
    assert all(math.isfinite(v) for v in got)
    event("parsed")
    if junk is None:
        assert got == [float(v) for v in values]
        assert count is None or len(got) == count


DIM = st.one_of(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(-2, 0),
                st.sampled_from([65_536, 65_537, 8192, 2**26, 10**20]))


@settings(PROPERTY, max_examples=EXAMPLES["shape"])
@given(dims=st.lists(DIM, min_size=2, max_size=3) | st.lists(DIM, max_size=4),
       sep=st.sampled_from([",", "x", ", ", " x "]),
       parens=st.booleans())
def test_input_shape_is_parsed_exactly_or_refused(dims: list[int], sep: str,
                                                  parens: bool) -> None:
    text = sep.join(map(str, dims))
    text = f"({text})" if parens else text
    valid = len(dims) in (2, 3) and min(dims) >= 1 and max(dims) <= 65_536 \
        and math.prod(dims) <= 2**26
    try:
        got = cli_options.parse_shape(text)
    except Exception as exc:  # noqa: BLE001
        refused(exc, "--input-shape")
        assert not valid, text
        return
    assert valid and got == tuple(dims)
    event("parsed")


# -- cli.run: the parse and check stages of whole commands ------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 'model' that is a few bytes of text, real data, and a real (tiny) scan report."""
    root = tmp_path_factory.mktemp("props")
    (root / "model.pt").write_text("not a model")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.uniform(0, 1, (20, 1, 8, 8)).astype(np.float32),
             y=np.arange(20) % 10)
    labels = [LabelResult(label=t, mask=rng.uniform(0, 1, (8, 8)).astype(np.float32),
                          pattern=rng.uniform(0, 1, (1, 8, 8)).astype(np.float32),
                          norm=float(10 + t), attack_success_rate=1.0, converged=True,
                          steps=3, seconds=0.1, final_cost=1e-3) for t in range(10)]
    labels[7].norm = 1.0
    result = ScanResult.from_labels(labels, nb_classes=10, anomaly_threshold=2.0,
                                    config=ScanConfig().to_dict(),
                                    model_info={"channels_first": True,
                                                "clip_values": [0.0, 1.0]})
    assert result.flagged_labels == [7]
    write_report(result, root / "report")
    return {"root": root, "model": root / "model.pt", "data": root / "data.npz",
            "report": root / "report"}


SCAN_FLAGS = ["--steps", "--mini-batches", "--batch-size", "--learning-rate", "--init-cost",
              "--norm", "--attack-success-threshold", "--patience", "--cost-multiplier",
              "--early-stop-threshold", "--early-stop-patience", "--anomaly-threshold",
              "--seed", "--label-batch", "--memory-budget-mb", "--restarts", "--labels",
              "--clip-values", "--subtract", "--divide", "--input-shape", "--arch-kwargs",
              "--max-samples", "--x-key", "--device", "--data-layout", "--output", "--preset",
              "--verdict", "--confirm-seeds", "--confirm-margin", "--fail-on"]
MITIGATE_FLAGS = ["--method", "--labels", "--layer", "--test-fraction", "--epochs",
                  "--learning-rate", "--stamped-fraction", "--max-fraction", "--target-asr",
                  "--top-fraction", "--target-fpr", "--seed", "--clip-values", "--subtract",
                  "--rounds"]
OPTION_TEXT = st.one_of(
    NUMBERS.map(str), st.sampled_from(["inf", "-inf", "nan", "1e400", "-0", "0x10", "1_0",
                                       "all", "auto", "", " ", "0-99999999999", "3-1",
                                       "1,2,3", "0,1e39", '{"a": NaN}', "[" * 50]),
    st.text(max_size=12))


@settings(PROPERTY, max_examples=EXAMPLES["run_scan"])
@given(options=st.lists(st.tuples(st.sampled_from(SCAN_FLAGS), OPTION_TEXT), min_size=1,
                        max_size=3))
def test_scan_with_random_options_exits_2_with_one_line(
        options: list[tuple[str, str]], inputs: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["scan", str(inputs["model"]), "--data", str(inputs["data"]), "--out",
            str(tmp_path / "out")]
    for flag, value in options:
        argv += [flag, value]
    capsys.readouterr()
    assert cli.run(argv) == cli.EXIT_USAGE  # a bad option, or the model (text) is refused
    event("refused the model" if "not a TorchScript" in stderr_line(capsys) else "refused")
    assert not (tmp_path / "out").exists()  # the folder made for the run is gone again


@settings(PROPERTY, max_examples=EXAMPLES["run_mitigate"])
@given(options=st.lists(st.tuples(st.sampled_from(MITIGATE_FLAGS), OPTION_TEXT),
                        max_size=3))
def test_mitigate_with_random_options_exits_2_with_one_line(
        options: list[tuple[str, str]], inputs: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["mitigate", str(inputs["model"]), "--data", str(inputs["data"]), "--report",
            str(inputs["report"]), "--out", str(tmp_path / "m")]
    for flag, value in options:
        argv += [flag, value]
    capsys.readouterr()
    assert cli.run(argv) == cli.EXIT_USAGE
    event("refused the model" if "not a TorchScript" in stderr_line(capsys) else "refused")
    assert not (tmp_path / "m").exists()


def _mutate(data: dict[str, Any], path: list[Any], value: Any) -> None:
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


MUTABLE = [[k] for k in ("schema_version", "flagged_labels", "nb_classes", "median_norm", "mad",
                         "anomaly_threshold", "partial", "wall_seconds", "config", "model_info",
                         "data_info", "versions", "restarts", "labels")] + \
    [["labels", 0, k] for k in ("label", "norm", "anomaly_index", "attack_success_rate",
                                "converged", "steps", "seconds", "final_cost", "mask_shape",
                                "pattern_shape", "mask", "pattern")] + \
    [["model_info", "clip_values"], ["model_info", "channels_first"],
     ["data_info", "class_counts"], ["data_info", "class_names"], ["labels", 0, "mask", 0]]


@settings(PROPERTY, max_examples=EXAMPLES["run_report"])
@given(where=st.sampled_from(MUTABLE), value=VALUES, whole=st.none() | VALUES)
def test_report_command_on_mutated_reports(where: list[Any], value: Any, whole: Any,
                                           inputs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((inputs["report"] / "report.json").read_text())
    if whole is not None:
        data = whole  # a JSON document of any shape
    else:
        _mutate(data, where, value)
    folder = tmp_path / "rep"
    folder.mkdir(exist_ok=True)
    (folder / "report.html").unlink(missing_ok=True)  # left by an earlier example
    (folder / "report.json").write_text(json.dumps(data))  # NaN/Infinity included
    capsys.readouterr()
    code = cli.run(["report", str(folder)])
    assert code in (cli.EXIT_CLEAN, cli.EXIT_USAGE)
    event(f"exit {code}")
    if code == cli.EXIT_USAGE:
        assert "report.json" in stderr_line(capsys)
    else:
        assert (folder / "report.html").is_file()
        reread = ScanResult.from_json(folder / "report.json")
        json.loads(reread.to_json(), parse_constant=lambda c: pytest.fail(c))
