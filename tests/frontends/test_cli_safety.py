"""The command line leaves the user's files alone, fails before the work, and exits honestly.

Every scan here is tiny (an untrained 8x8 CNN, two labels, three steps): these tests are about
files, exit codes and messages, not about detection.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuralcleanse.backends.torch.architectures import small_cnn
from neuralcleanse.frontends import api, cli
from neuralcleanse.frontends.cli import cmd_mitigate, cmd_scan
from neuralcleanse.frontends.cli import inputs as cli_inputs

ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        '{"image_size": 8, "width": 4}']
QUICK = ["--labels", "6,7", "--steps", "3", "--mini-batches", "1", "--no-early-stop",
         "--no-progress"]
CONTROL = [chr(c) for c in range(32)] + ["\x7f", "\x9b", "\u202e"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained small CNN's state dict and 60 random 8x8 images, saved as files."""
    root = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    torch.save(small_cnn(image_size=8, width=4).state_dict(), root / "model.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.uniform(0, 1, (60, 1, 8, 8)).astype(np.float32),
             y=np.arange(60) % 10)
    return {"root": root, "model": root / "model.pt", "data": root / "data.npz"}


@pytest.fixture(scope="module")
def scanned(files: dict[str, Path]) -> Path:
    """A finished scan's report folder (labels 6 and 7)."""
    out = files["root"] / "scanned"
    assert cli.run(scan_args(files["model"], files["data"], out)) in (0, 1)
    return out


def scan_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["scan", str(model), "--data", str(data), "--out", str(out), *ARCH, *QUICK, *extra]


def mitigate_args(files: dict[str, Path], report: Path, *extra: str,
                  model: Path | None = None) -> list[str]:
    return ["mitigate", str(model or files["model"]), "--data", str(files["data"]),
            "--report", str(report), "--labels", "7", *ARCH, *extra]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed run; it carries no control character."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("neuralcleanse: error: "), err
    assert "Traceback" not in err
    assert not any(c in lines[0] for c in CONTROL), repr(lines[0])
    return lines[0]


def interrupt_after_first_label(monkeypatch: pytest.MonkeyPatch) -> None:
    original = cli.PartialStore.save

    def save_then_interrupt(store: cli.PartialStore, result: Any) -> None:
        original(store, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.PartialStore, "save", save_then_interrupt)


# -- nothing of the user's is deleted or overwritten ------------------------------------------
def test_user_files_in_partial_survive_a_new_scan(files: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    # an earlier scan with other settings, interrupted: its label file is stale
    interrupt_after_first_label(monkeypatch)
    assert cli.run(scan_args(files["model"], files["data"], out, "--labels", "3",
                             "--seed", "5")) == cli.EXIT_INTERRUPTED
    monkeypatch.undo()
    stale = out / "partial" / "label_3.json"
    assert json.loads(stale.read_text())["result"]["label"] == 3
    notes = out / "partial" / "notes.txt"
    notes.write_text("my notes")
    look_alike = out / "partial" / "label_9.json"  # the store's name, the user's content
    look_alike.write_text('{"mine": true}')
    (out / "partial" / "keep").mkdir()

    code = cli.run(scan_args(files["model"], files["data"], out))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    assert not stale.exists()  # the tool's own stale result is removed...
    assert notes.read_text() == "my notes"  # ...and nothing else
    assert look_alike.read_text() == '{"mine": true}'
    assert (out / "partial" / "keep").is_dir()
    assert sorted(p.name for p in (out / "partial").iterdir()) == ["keep", "label_9.json",
                                                                     "notes.txt"]
    assert [e["label"] for e in json.loads((out / "report.json").read_text())["labels"]] == \
        [6, 7]


def test_user_files_survive_resume_and_the_own_files_go(files: dict[str, Path],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    (out / "partial").mkdir(parents=True)
    notes = out / "partial" / "notes.txt"
    notes.write_text("my notes")
    interrupt_after_first_label(monkeypatch)
    assert cli.run(scan_args(files["model"], files["data"], out)) == cli.EXIT_INTERRUPTED
    monkeypatch.undo()
    own = sorted(p.name for p in (out / "partial").glob("label_*.json"))
    assert len(own) == 1
    code = cli.run(scan_args(files["model"], files["data"], out, "--resume"))
    assert code in (cli.EXIT_CLEAN, cli.EXIT_FLAGGED)
    assert notes.read_text() == "my notes"
    assert [p.name for p in (out / "partial").iterdir()] == ["notes.txt"]
    assert json.loads((out / "report.json").read_text())["partial"] is False


def test_empty_partial_folder_is_removed(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.run(scan_args(files["model"], files["data"], out)) in (0, 1)
    assert not (out / "partial").exists()
    assert (out / "report.json").is_file()


def test_a_foreign_file_under_a_label_name_stops_the_scan_before_it_starts(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    (out / "partial").mkdir(parents=True)
    foreign = out / "partial" / "label_6.json"  # label 6 is scanned: saving it would replace it
    foreign.write_text("user data, not JSON")
    started: list[int] = []
    monkeypatch.setattr(api, "scan", lambda *a, **k: started.append(1))
    assert cli.run(scan_args(files["model"], files["data"], out)) == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "label_6.json" in message and "not written by neuralcleanse" in message
    assert started == []
    assert foreign.read_text() == "user data, not JSON"


def test_other_files_in_the_output_folder_are_untouched(files: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "triggers").mkdir(parents=True)
    mine = {out / "README.txt": b"mine", out / "triggers" / "my_trigger.png": b"\x89PNG mine",
            out / "report.json.tmp": b"my tmp"}
    for path, content in mine.items():
        path.write_bytes(content)
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(b"do not follow links")
    link = out / "triggers" / "label_6_mask.png"
    link.symlink_to(elsewhere)
    assert cli.run(scan_args(files["model"], files["data"], out)) in (0, 1)
    for path, content in mine.items():
        assert path.read_bytes() == content
    assert elsewhere.read_bytes() == b"do not follow links"  # the link was replaced, not used
    assert not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "README.txt", "report.html", "report.json", "report.json.tmp", "triggers"]


def test_mitigate_save_onto_the_model_is_refused(files: dict[str, Path], scanned: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(files["model"].read_bytes())
    before = model.read_bytes()
    (tmp_path / "link.pt").symlink_to(model)
    (tmp_path / "hard.pt").hardlink_to(model)
    (tmp_path / "sub").mkdir()
    for target in (model, tmp_path / "sub" / ".." / "model.pt", tmp_path / "link.pt",
                   tmp_path / "hard.pt"):
        code = cli.run(mitigate_args(files, scanned, "--out", str(tmp_path / "m"),
                                     "--save", str(target), model=model))
        assert code == cli.EXIT_USAGE, target
        message = one_line_error(capsys)
        assert "input model" in message and "--overwrite-model" in message
        assert model.read_bytes() == before
    relative = os.path.relpath(model)
    assert cli.run(mitigate_args(files, scanned, "--out", str(tmp_path / "m"), "--save",
                                 relative, model=model)) == cli.EXIT_USAGE
    assert model.read_bytes() == before
    assert not (tmp_path / "m").exists()  # refused before the output folder was kept

    code = cli.run(mitigate_args(files, scanned, "--out", str(tmp_path / "m"), "--save",
                                 str(tmp_path / "link.pt"), "--overwrite-model", model=model))
    assert code == cli.EXIT_CLEAN
    assert model.read_bytes() != before  # asked for: the model itself was replaced
    assert (tmp_path / "link.pt").is_symlink()
    repaired = small_cnn(image_size=8, width=4)
    repaired.load_state_dict(torch.load(model, weights_only=True))
    saved = json.loads((tmp_path / "m" / "mitigation.json").read_text())["saved_model"]
    assert Path(saved) == model.resolve()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.pt")]


def test_mitigate_default_save_path_that_is_the_model_is_refused(
        files: dict[str, Path], scanned: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    out.mkdir()
    model = out / "repaired_unlearning.pt"  # the name the default save path would take
    model.write_bytes(files["model"].read_bytes())
    before = model.read_bytes()
    assert cli.run(mitigate_args(files, scanned, "--out", str(out), model=model)) == 2
    assert "default save path" in one_line_error(capsys)
    assert model.read_bytes() == before


def test_mitigate_save_onto_another_existing_file_needs_the_flag(
        files: dict[str, Path], scanned: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pt"
    other.write_bytes(b"someone's file")
    args = mitigate_args(files, scanned, "--out", str(tmp_path / "m"), "--save", str(other))
    assert cli.run(args) == cli.EXIT_USAGE
    assert "exists" in one_line_error(capsys)
    assert other.read_bytes() == b"someone's file"
    assert cli.run([*args, "--overwrite-model"]) == cli.EXIT_CLEAN
    assert other.read_bytes() != b"someone's file"
    new = tmp_path / "new" / "repaired.pt"  # a new file (and folder) needs no flag
    assert cli.run(mitigate_args(files, scanned, "--out", str(tmp_path / "m"), "--save",
                                 str(new))) == cli.EXIT_CLEAN
    assert new.is_file()


def test_mitigate_filtering_save_must_be_a_json_file(files: dict[str, Path], scanned: Path,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(mitigate_args(files, scanned, "--save", str(tmp_path / "x.pt"),
                                 "--method", "filtering"))
    assert code == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "--save" in message and "a name ending in .json" in message
    assert not (tmp_path / "x.pt").exists()


def _save_targets(files: dict[str, Path], scanned: Path, out: Path, test_data: Path
                  ) -> dict[str, tuple[Path, str]]:
    """Save paths that name an input or an output of the run, and the refusal each gets."""
    links = out.parent / "links"
    links.mkdir()
    (links / "data.npz").symlink_to(files["data"])
    (links / "report.json").hardlink_to(scanned / "report.json")
    return {
        "data": (files["data"], "is the data (--data)"),
        "data through a link": (links / "data.npz", "is the data (--data)"),
        "test data": (test_data, "is the test data (--test-data)"),
        "scan report": (scanned / "report.json", "is the scan report (--report)"),
        "scan report, hard link": (links / "report.json", "is the scan report (--report)"),
        "mitigation.json": (out / "mitigation.json", "a file this command writes into the output"),
        "report.json copy": (out / "report.json", "a file this command writes into the output"),
        "report.html": (out / "report.html", "a file this command writes into the output"),
        "a trigger image": (out / "triggers" / "label_7_mask.png",
                            "a folder of files this command writes"),
    }


@pytest.mark.parametrize("method", ["unlearning", "pruning"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_mitigate_save_never_replaces_an_input_or_an_output_of_the_run(
        files: dict[str, Path], scanned: Path, tmp_path: Path, method: str, overwrite: bool,
        capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "mitigation.json").write_text("an earlier run's results")
    test_data = tmp_path / "test.npz"
    test_data.write_bytes(files["data"].read_bytes())
    watched = [files["data"], scanned / "report.json", test_data, out / "mitigation.json"]
    before = {p: p.read_bytes() for p in watched}
    extra = ["--overwrite-model"] if overwrite else []  # replaces the model, never these
    for name, (target, expected) in _save_targets(files, scanned, out, test_data).items():
        code = cli.run(mitigate_args(files, scanned, "--method", method, "--out", str(out),
                                     "--test-data", str(test_data), "--save", str(target),
                                     *extra))
        assert code == cli.EXIT_USAGE, name
        message = one_line_error(capsys)
        assert expected in message and "--save" in message, (name, message)
    assert {p: p.read_bytes() for p in watched} == before
    assert sorted(p.name for p in out.iterdir()) == ["mitigation.json"]
    assert no_loading == []


def test_mitigate_save_into_the_report_folder_it_writes_is_refused(
        files: dict[str, Path], scanned: Path, capsys: pytest.CaptureFixture[str],
        no_loading: list[Any]) -> None:
    """Without --out the report folder is the output folder: its report is input and output."""
    before = {p: p.read_bytes() for p in scanned.iterdir() if p.is_file()}
    for target, expected in ((scanned / "report.json", "is the scan report (--report)"),
                             (scanned / "mitigation.json", "a file this command writes")):
        for method in ("unlearning", "filtering"):
            assert cli.run(mitigate_args(files, scanned, "--method", method, "--save",
                                         str(target))) == cli.EXIT_USAGE
            assert expected in one_line_error(capsys)
    assert {p: p.read_bytes() for p in scanned.iterdir() if p.is_file()} == before
    assert not (scanned / "mitigation.json").exists()


def test_mitigate_filter_is_never_saved_over_the_scan_report(
        files: dict[str, Path], scanned: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    report = scanned / "report.json"
    before = report.read_bytes()
    for extra in ([], ["--overwrite-model"]):
        code = cli.run(mitigate_args(files, scanned, "--method", "filtering", "--out",
                                     str(tmp_path / "m"), "--save", str(report), *extra))
        assert code == cli.EXIT_USAGE
        assert "is the scan report (--report), which the filter would replace" in \
            one_line_error(capsys)
    assert report.read_bytes() == before


# -- fail before the work --------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every attempt to load a model: a refused run must make none."""
    calls: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cmd_scan, "load_inputs", record)
    monkeypatch.setattr(cmd_mitigate, "load_inputs", record)
    monkeypatch.setattr(cli_inputs, "load_model", record)
    return calls


@pytest.mark.parametrize("kind", ["file", "under_a_file", "read_only"])
def test_unwritable_out_fails_before_loading(files: dict[str, Path], tmp_path: Path,
                                            kind: str, capsys: pytest.CaptureFixture[str],
                                            no_loading: list[Any]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    if kind == "file":
        out = blocker
    elif kind == "under_a_file":
        out = blocker / "report"
    else:
        if os.geteuid() == 0:
            pytest.skip("runs as root, where chmod 0o555 does not stop writes; the "
                        "'under_a_file' case covers a folder that cannot be written")
        out = tmp_path / "read_only"
        out.mkdir()
        out.chmod(0o555)
    missing_model = tmp_path / "no_such_model.pt"  # the error must be about OUT, not this
    code = cli.run(scan_args(missing_model, files["data"], out))
    assert code == cli.EXIT_USAGE
    message = one_line_error(capsys)
    assert "--out" in message and str(out.name) in message
    assert "no_such_model" not in message
    assert no_loading == []


def test_mitigate_unwritable_out_and_save_folder_fail_before_loading(
        files: dict[str, Path], scanned: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    missing_model = tmp_path / "no_such_model.pt"
    code = cli.run(mitigate_args(files, scanned, "--out", str(blocker / "out"),
                                 model=missing_model))
    assert code == cli.EXIT_USAGE
    assert "--out" in one_line_error(capsys)
    code = cli.run(mitigate_args(files, scanned, "--out", str(tmp_path / "m"), "--save",
                                 str(blocker / "repaired.pt"), model=missing_model))
    assert code == cli.EXIT_USAGE
    assert "--save" in one_line_error(capsys)
    assert not (tmp_path / "m").exists()  # the folder it made for --out is gone again
    assert no_loading == []


def test_output_names_of_the_wrong_kind_fail_before_loading(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_loading: list[Any]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "triggers").write_text("a file where the trigger images go")
    assert cli.run(scan_args(files["model"], files["data"], out)) == cli.EXIT_USAGE
    assert "triggers" in one_line_error(capsys)
    (out / "triggers").unlink()
    (out / "report.json").mkdir()
    assert cli.run(scan_args(files["model"], files["data"], out)) == cli.EXIT_USAGE
    assert "report.json" in one_line_error(capsys)
    assert no_loading == []


def test_a_failed_run_removes_only_the_empty_folders_it_made(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "deeper"
    code = cli.run(scan_args(tmp_path / "missing.pt", files["data"], out))
    assert code == cli.EXIT_USAGE
    assert "does not exist" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert cli.run(scan_args(tmp_path / "missing.pt", files["data"], existing)) == 2
    assert existing.is_dir()  # the user's (empty) folder stays


# -- bad input is exit 2 with one line ------------------------------------------------------
SCAN_CASES = [
    (["--cost-multiplier", "inf"], "--cost-multiplier"),
    (["--cost-multiplier", "1e308"], "(1, 1000]"),
    (["--init-cost", "inf"], "--init-cost"),
    (["--init-cost", "1e300"], "init_cost"),
    (["--learning-rate", "1e9"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--steps", "100000000000000000000"], "--steps"),
    (["--batch-size", "1000000000"], "--batch-size"),
    (["--memory-budget-mb", "inf"], "--memory-budget-mb"),
    (["--memory-budget-mb", "1e12"], "memory_budget_mb"),
    (["--anomaly-threshold", "-0.0"], "--anomaly-threshold"),
    (["--seed", "18446744073709551616"], "--seed"),
    (["--seed", "4294967295", "--restarts", "2"], "--restarts"),
    (["--mini-batches", "99999999999"], "--mini-batches"),
    (["--label-batch", "-1"], "--label-batch"),
    (["--labels", "0-999999999999"], "--labels"),
    (["--labels", "7-3"], "backwards"),
    (["--labels", "-1"], "--labels"),
    (["--labels", "1" * 5000], "--labels"),
    (["--clip-values", "0,1e39"], "--clip-values"),
    (["--divide", "1e-45"], "--divide"),
    (["--subtract", "nan"], "--subtract"),
    (["--input-shape", "1,100000,100000"], "--input-shape"),
    (["--arch-kwargs", "[" * 100_000], "--arch-kwargs"),
    (["--arch-kwargs", '{"image_size": Infinity}'], "--arch-kwargs"),
]


@pytest.mark.parametrize("extra, expected", SCAN_CASES)
def test_bad_scan_settings_exit_2_before_loading(files: dict[str, Path], tmp_path: Path,
                                                 extra: list[str], expected: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_inputs, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code = cli.run(["scan", str(files["model"]), "--data", str(files["data"]), "--out",
                    str(tmp_path / "out"), *ARCH, *extra])
    assert code == cli.EXIT_USAGE
    assert expected in one_line_error(capsys)


CONFIGS = [
    ("c.json", '{"steps": Infinity}', "Infinity"),
    ("c.json", '{"learning_rate": NaN}', "NaN"),
    ("c.json", '{"norm": -Infinity}', "Infinity"),
    ("c.json", '{"steps": 1e400}', "steps"),
    ("c.json", '{"steps": [3]}', "steps"),
    ("c.json", '{"steps": "3"}', "steps"),
    ("c.json", '{"steps": true}', "steps"),
    ("c.json", '{"steps": 3.5}', "steps"),
    ("c.json", '{"early_stop": 1}', "early_stop"),
    ("c.json", '{"progress": "no"}', "progress"),
    ("c.json", '{"norm": {"p": 1}}', "norm"),
    ("c.json", '{"scan": {"steps": {"deep": [1, 2]}}}', "steps"),
    ("c.json", '{"steps": 1' + "0" * 5000 + "}", "too long"),
    ("c.json", "[" * 100_000, "nested"),
    ("c.json", '["steps", 3]', "table"),
    ("c.json", '{"st\\u001beps": 3}', "unknown setting"),
    ("c.json", "", "not valid JSON"),
    ("c.toml", "steps = inf\n", "steps"),
    ("c.toml", "cost_multiplier = 1e308\n", "cost_multiplier"),
    ("c.toml", "seed = 9223372036854775807\n", "seed"),
    ("c.toml", "batch_size = [1, 2]\n", "batch_size"),
    ("c.toml", "[scan]\nsteps = 3\n[extra]\nx = 1\n", "unknown setting"),
    ("c.toml", "steps = {a = 1}\n", "steps"),
    ("c.toml", "a = " + "[" * 5000, "TOML"),
    ("c.toml", "steps = 3\nsteps = 4\n", "TOML"),
    ("c.yaml", "steps: 3\n", ".json or .toml"),
]


@pytest.mark.parametrize("name, content, expected", CONFIGS)
def test_bad_config_files_exit_2(files: dict[str, Path], tmp_path: Path, name: str,
                                 content: str, expected: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / name
    config.write_text(content)
    code = cli.run(["scan", str(tmp_path / "missing.pt"), "--data", str(files["data"]),
                    "--out", str(tmp_path / "out"), "--config", str(config)])
    assert code == cli.EXIT_USAGE
    assert expected in one_line_error(capsys)


def test_config_file_that_is_not_utf8_or_a_folder(tmp_path: Path, files: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_bytes(b"\xff\xfe steps = 3")
    (tmp_path / "d.json").mkdir()
    for config, expected in (("c.toml", "UTF-8"), ("d.json", "not a file")):
        code = cli.run(["scan", "m.pt", "--data", str(files["data"]), "--out",
                        str(tmp_path / "o"), "--config", str(tmp_path / config)])
        assert code == cli.EXIT_USAGE
        assert expected in one_line_error(capsys)


BAD_REPORTS = [
    ("[1, 2]", "JSON object"),
    ('"report"', "JSON object"),
    ("{", "not valid JSON"),
    ('{"schema_version": 1}', "nb_classes"),
    ('{"schema_version": 1, "nb_classes": "ten", "labels": []}', "nb_classes"),
    ('{"schema_version": 1, "nb_classes": NaN, "labels": []}', "nb_classes"),
    ('{"schema_version": 1, "nb_classes": 1e400, "labels": []}', "nb_classes"),
    ('{"schema_version": 1, "nb_classes": 99999999999, "labels": []}', "nb_classes"),
    ('{"schema_version": "1"}', "schema_version"),
    ('{"schema_version": 1, "nb_classes": 10, "labels": {"0": 1}}', "labels"),
    ('{"schema_version": 1, "nb_classes": 10, "labels": [{"label": 0}]}', "labels[0]"),
]


def _report_with(base: dict[str, Any], change: Any) -> str:
    data = json.loads(json.dumps(base))
    change(data)
    return json.dumps(data)


@pytest.fixture(scope="module")
def good_report(scanned: Path) -> dict[str, Any]:
    return json.loads((scanned / "report.json").read_text())


def _edits() -> list[tuple[Any, str]]:
    def set_label(key: str, value: Any) -> Any:
        return lambda d: d["labels"][0].__setitem__(key, value)

    return [
        (lambda d: d.__setitem__("flagged_labels", [3]), "flagged_labels"),
        (lambda d: d.__setitem__("flagged_labels", "7"), "flagged_labels"),
        (lambda d: d.__setitem__("config", []), "config"),
        (lambda d: d.__setitem__("model_info", {"clip_values": ["a", "b"]}), "clip_values"),
        (lambda d: d.__setitem__("data_info", {"class_counts": 5}), "class_counts"),
        (lambda d: d.__setitem__("restarts", {"n": 2}), "restarts"),
        (lambda d: d.__setitem__("partial", "no"), "partial"),
        (lambda d: d["labels"].append(dict(d["labels"][0])), "twice"),
        (set_label("label", 10), "outside"),
        (set_label("label", True), "label"),
        (set_label("mask_shape", [8]), "mask_shape"),
        (set_label("mask_shape", [100000, 100000]), "mask_shape"),
        (set_label("mask", [0.5] * 3), "mask"),
        (set_label("mask", "x" * 64), "mask"),
        (set_label("pattern_shape", [1, 4, 4]), "pattern_shape"),
        (set_label("norm", "small"), "norm"),
        (set_label("converged", 1), "converged"),
        (set_label("steps", -1), "steps"),
    ]


@pytest.mark.parametrize("how", ["text", "edit"])
def test_bad_report_json_exits_2_for_report_and_mitigate(
        files: dict[str, Path], good_report: dict[str, Any], tmp_path: Path, how: str,
        capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    cases = BAD_REPORTS if how == "text" else [
        (_report_with(good_report, change), expected) for change, expected in _edits()]
    folder = tmp_path / "rep"
    folder.mkdir()
    for content, expected in cases:
        (folder / "report.json").write_text(content)
        assert cli.run(["report", str(folder)]) == cli.EXIT_USAGE, content[:80]
        message = one_line_error(capsys)
        assert expected in message and "report.json" in message, (content[:80], message)
        assert not (folder / "report.html").exists()
        code = cli.run(mitigate_args(files, folder, "--out", str(tmp_path / "m")))
        assert code == cli.EXIT_USAGE
        assert expected in one_line_error(capsys)
    assert no_loading == []


def test_bad_mitigation_json_next_to_a_report_exits_2(
        scanned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "rep"
    folder.mkdir()
    (folder / "report.json").write_bytes((scanned / "report.json").read_bytes())
    for content in ('{"schema_version": 1, "method": "pruning", "labels": "7", "report": {}}',
                    '{"schema_version": 1, "method": "unlearning", "labels": [7], '
                    '"report": []}', "[]", '{"schema_version": 1, "method": "x"}'):
        (folder / "mitigation.json").write_text(content)
        assert cli.run(["report", str(folder)]) == cli.EXIT_USAGE
        assert "mitigation.json" in one_line_error(capsys)


@pytest.mark.parametrize("extra, expected", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "2", "--method", "pruning"], "--epochs"),
    (["--epochs", "1000000000"], "--epochs"),
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--stamped-fraction", "1.5"], "--stamped-fraction"),
    (["--test-fraction", "1"], "--test-fraction"),
    (["--top-fraction", "0.1"], "--top-fraction"),
    (["--layer", "0"], "--layer"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "18446744073709551616"], "--seed"),
    (["--labels", "99999999999999"], "--labels"),
    (["--labels", "3"], "3"),
    (["--test-data", "missing.npz"], "--test-data"),
])
def test_bad_mitigate_options_exit_2_before_loading(
        files: dict[str, Path], scanned: Path, tmp_path: Path, extra: list[str],
        expected: str, capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    code = cli.run([*mitigate_args(files, scanned, "--out", str(tmp_path / "m")), *extra])
    assert code == cli.EXIT_USAGE
    assert expected in one_line_error(capsys)
    assert no_loading == []


@pytest.mark.parametrize("name", ["m\x1b[31m.pt", "new\nline.pt", "bidi\u202e.pt",
                                  "bell\a.pt"])
def test_error_messages_carry_no_control_characters(files: dict[str, Path], tmp_path: Path,
                                                    name: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["scan", str(tmp_path / name), "--data", str(files["data"]), "--out",
                    str(tmp_path / "out")])
    assert code == cli.EXIT_USAGE
    message = one_line_error(capsys)  # checks that no control character got through
    assert "does not exist" in message


def test_markup_and_escapes_in_paths_are_printed_literally(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "[/]weird [bold]\x1b[2J"
    assert cli.run(scan_args(files["model"], files["data"], out)) in (0, 1)
    printed = capsys.readouterr().out
    assert "[/]weird [bold]" in printed and "\x1b" not in printed


# -- no NaN or Infinity in what the tool writes --------------------------------------------
def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_never_land_in_report_json(files: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_scan = api.scan

    def diverging_scan(*args: Any, **kwargs: Any) -> Any:
        result = real_scan(*args, **kwargs)
        first = result.labels[0]
        first.norm, first.final_cost, first.seconds = math.nan, math.inf, -math.inf
        first.mask[0, 0] = np.nan
        first.pattern.flat[0] = np.inf
        result.median_norm = math.inf
        result.config["extra"] = float("nan")
        return result

    monkeypatch.setattr(api, "scan", diverging_scan)
    out = tmp_path / "out"
    assert cli.run(scan_args(files["model"], files["data"], out)) in (0, 1)
    report = _strict((out / "report.json").read_text())
    entry = report["labels"][0]
    assert entry["norm"] is None and entry["final_cost"] is None and entry["seconds"] is None
    assert entry["mask"][0] is None and entry["pattern"][0] is None
    assert report["median_norm"] is None and report["config"]["extra"] is None
    monkeypatch.undo()
    # the readers accept what the writer wrote
    assert cli.run(["report", str(out)]) == cli.EXIT_CLEAN
    code = cli.run(mitigate_args(files, out, "--out", str(tmp_path / "m")))
    assert code == cli.EXIT_CLEAN
    _strict((tmp_path / "m" / "mitigation.json").read_text())
    _strict((tmp_path / "m" / "report.json").read_text())


def test_mitigate_refuses_a_trigger_with_missing_values(
        files: dict[str, Path], good_report: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_loading: list[Any]) -> None:
    folder = tmp_path / "rep"
    folder.mkdir()
    report = json.loads(json.dumps(good_report))
    seven = next(e for e in report["labels"] if e["label"] == 7)
    seven["pattern"][5] = None  # what the writer makes of a NaN
    (folder / "report.json").write_text(json.dumps(report))
    assert cli.run(["report", str(folder)]) == cli.EXIT_CLEAN  # a report can show it...
    capsys.readouterr()
    code = cli.run(mitigate_args(files, folder, "--out", str(tmp_path / "m")))
    assert code == cli.EXIT_USAGE  # ...but no mitigation stamps it on images
    assert "label 7" in one_line_error(capsys)
    assert no_loading == []


def test_partial_label_files_are_strict_json(files: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    interrupt_after_first_label(monkeypatch)
    assert cli.run(scan_args(files["model"], files["data"], out)) == cli.EXIT_INTERRUPTED
    for path in (out / "partial").glob("label_*.json"):
        data = _strict(path.read_text())
        assert data["kind"] == cli.PartialStore.MARKER and isinstance(data["fingerprint"], str)
    _strict((out / "report.json").read_text())
