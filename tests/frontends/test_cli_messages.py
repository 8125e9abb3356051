"""What the command line prints and returns: flag wording, exit codes, the resume store's errors.

No test here loads a real model: ``load_model`` is replaced by a function that raises or warns
what the library would, so each case runs in milliseconds.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer

from neuralcleanse.core.errors import InputError, InputTypeError, LoadError
from neuralcleanse.core.results import LabelResult
from neuralcleanse.frontends import cli
from neuralcleanse.frontends.cli import inputs as cli_inputs
from neuralcleanse.frontends.cli.cmd_mitigate import mitigation_options
from neuralcleanse.frontends.cli.messages import FLAG_SPELLINGS, to_flags
from neuralcleanse.frontends.cli.options import Method
from neuralcleanse.io.resume import PartialStore
from neuralcleanse.mitigation.unlearning import MAX_EPOCHS, MAX_LEARNING_RATE

#: A library message that uses every parameter spelling the command line translates.
LIBRARY_MESSAGE = (
    "the state dict needs arch='pkg.module:factory' (arch_kwargs={'nb_classes': 10} are "
    "passed to it), or trust_pickle=True for a pickled module; give x_key='images' and "
    "y_key='labels'; input_shape=(1, 28, 28) does not fit; channels_first=True contradicts the "
    "model: pass channels_first=False or leave channels_first= unset; give image_size=(8, 8) "
    "to resize them")
TRANSLATED = (
    "the state dict needs --arch 'pkg.module:factory' (--arch-kwargs {'nb_classes': 10} are "
    "passed to it), or --trust-pickle for a pickled module; give --x-key 'images' and "
    "--y-key 'labels'; --input-shape 1,28,28 does not fit; --channels-first contradicts the "
    "model: pass --channels-last or leave --channels-first/--channels-last unset; give "
    "--input-shape 8,8 to resize them")


def test_every_library_spelling_becomes_its_flag() -> None:
    assert to_flags(LIBRARY_MESSAGE) == TRANSLATED
    for spelling, flag in FLAG_SPELLINGS:  # each spelling on its own, in a sentence
        assert to_flags(f"pass {spelling} here") == f"pass {flag} here"
        assert to_flags(f"{spelling}") == flag


@pytest.mark.parametrize("text", [
    "/tmp/arch=1.pt is not a model",  # a path that holds a spelling
    "'run_arch=3' is unknown",
    "--labels takes integers (got 'x_key=1')",  # the user's value, quoted
    'no module "arch=x"',
    "max_key=3 and data_format='channels_first'",
    "--arch=pkg.module:factory is already a flag",
])
def test_text_that_is_not_a_library_spelling_is_left_alone(text: str) -> None:
    assert to_flags(text) == text


@pytest.fixture
def argv(tmp_path: Path) -> list[str]:
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    return ["scan", str(model), "--data", str(data), "--out", str(tmp_path / "out"),
            "--no-progress"]


def loading_raises(monkeypatch: pytest.MonkeyPatch, exc: BaseException,
                   warning: str | None = None) -> None:
    def load_model(*args: Any, **kwargs: Any) -> None:
        if warning is not None:
            warnings.warn(warning, UserWarning, stacklevel=1)
        raise exc

    monkeypatch.setattr(cli_inputs, "load_model", load_model)


def test_library_errors_and_warnings_are_printed_with_flags(
        argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    loading_raises(monkeypatch, LoadError(LIBRARY_MESSAGE),
                   warning="the images look channels-last: pass channels_first=False")
    assert cli.run(argv) == cli.EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["neuralcleanse: warning: the images look channels-last: pass "
                     "--channels-last",
                     f"neuralcleanse: error: {TRANSLATED}"]
    for spelling, _ in FLAG_SPELLINGS:
        assert spelling not in lines[1]


@pytest.mark.parametrize("exc, code", [
    (InputError("bad value"), cli.EXIT_USAGE),
    (InputTypeError("bad type"), cli.EXIT_USAGE),
    (LoadError("bad file"), cli.EXIT_USAGE),
    (cli.CliError("bad flag"), cli.EXIT_USAGE),
    (PermissionError(errno.EACCES, "Permission denied", "model.pt"), cli.EXIT_USAGE),
    (ValueError("a plain ValueError is a bug, not bad input"), cli.EXIT_INTERNAL),
    (TypeError("so is a TypeError"), cli.EXIT_INTERNAL),
    (RuntimeError("and a framework's error"), cli.EXIT_INTERNAL),
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED),
])
def test_exit_codes_follow_the_error_type(argv: list[str], exc: BaseException, code: int,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    loading_raises(monkeypatch, exc)
    assert cli.run(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == cli.EXIT_INTERRUPTED:  # typer turns Ctrl-C outside a scan into a quiet 130
        assert "error" not in err
        return
    assert len(err.splitlines()) == 1
    if code == cli.EXIT_USAGE:
        assert err.startswith("neuralcleanse: error: ") and "internal error" not in err
    if code == cli.EXIT_INTERNAL:
        assert "internal error" in err and "--debug" in err
    if isinstance(exc, OSError):
        assert "Permission denied: model.pt" in err


def test_debug_shows_the_traceback_of_an_internal_error(argv: list[str],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    loading_raises(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        cli.run(["--debug", *argv])


def test_the_cli_error_is_an_input_error() -> None:
    assert issubclass(cli.CliError, InputError)


def test_channel_order_help_names_the_models_own_layout() -> None:
    scan = typer.main.get_command(cli.app).commands["scan"]  # type: ignore[attr-defined]
    text = " ".join(p.help or "" for p in scan.params if "--channels-first" in p.opts)
    assert "model's own" in text and "Keras" in text and "torch" in text
    assert "last for Keras" not in text


# -- the mitigation flags use the library's checks --------------------------------------------
@pytest.mark.parametrize("name, method, good, bad", [
    ("epochs", Method.unlearning, MAX_EPOCHS, MAX_EPOCHS + 1),
    ("learning_rate", Method.unlearning, MAX_LEARNING_RATE, MAX_LEARNING_RATE * 1.01),
    ("target_asr", Method.pruning, 0.0, -0.01),
    ("target_fpr", Method.filtering, 0.5, 1.0),
    ("fpr_confidence", Method.filtering, 0.9, 1.0),
    ("test_fraction", Method.pruning, 0.5, 1.0),
])
def test_mitigation_flags_take_the_librarys_bounds(name: str, method: Method, good: float,
                                                   bad: float) -> None:
    flag = "--" + name.replace("_", "-")
    assert mitigation_options(method, None, {name: good}) == {name: good}
    with pytest.raises(cli.CliError) as refused:
        mitigation_options(method, None, {name: bad})
    assert str(refused.value).startswith(f"{flag} must be ")


def test_a_mitigation_flag_of_another_method_is_refused() -> None:
    with pytest.raises(cli.CliError, match="--top-fraction applies to --method filtering"):
        mitigation_options(Method.pruning, None, {"top_fraction": 0.1})


# -- the resume store -------------------------------------------------------------------------
def label(t: int) -> LabelResult:
    rng = np.random.default_rng(t)
    return LabelResult(label=t, mask=rng.uniform(0, 1, (4, 4)).astype(np.float32),
                       pattern=rng.uniform(0, 1, (1, 4, 4)).astype(np.float32),
                       norm=float(t + 1), attack_success_rate=1.0, converged=True, steps=3,
                       seconds=0.1, final_cost=1e-3)


def test_resume_store_refusals_are_library_input_errors(tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    PartialStore(folder, "model-a").save(label(0))
    assert [r.label for r in PartialStore(folder, "model-a").load()] == [0]
    with pytest.raises(InputError, match="another model, data or settings") as other:
        PartialStore(folder, "model-b").load()
    assert not isinstance(other.value, cli.CliError)
    assert "--" not in str(other.value)  # no flag in a library message

    mine = folder / "label_1.json"
    mine.write_text('{"mine": true}')
    with pytest.raises(InputError, match="not written by neuralcleanse") as foreign:
        PartialStore(folder, "model-a").save(label(1))
    assert not isinstance(foreign.value, cli.CliError) and "--" not in str(foreign.value)
    assert mine.read_text() == '{"mine": true}'
    assert PartialStore(folder, "model-a").foreign([0, 1, 2]) == [mine]

    PartialStore(folder, "model-a").clear()
    assert sorted(p.name for p in folder.iterdir()) == ["label_1.json"]  # the user's file stays
