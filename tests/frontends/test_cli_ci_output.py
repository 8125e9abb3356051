"""What ``neuralcleanse scan`` gives a CI pipeline: ``--format json``, ``--fail-on``,
``--quiet``, and lines that are not wrapped when stdout is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neuralcleanse.frontends import cli
from neuralcleanse.io.json_schemas import load_schema
from torch_models import untrained_cnn_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

jsonschema = pytest.importorskip("jsonschema")  # in the dev extra

ARCH = ["--arch", "neuralcleanse.backends.torch.architectures:small_cnn", "--arch-kwargs",
        '{"image_size": 8}']
#: Three labels and a threshold below the smallest anomaly index three distinct norms can give
#: (0.674 = 1 / 1.4826): the label with the smallest trigger is always flagged, in seconds.
FLAGGING = ["--labels", "2,5,7", "--steps", "3", "--mini-batches", "1", "--batch-size", "8",
            "--no-early-stop", "--anomaly-threshold", "0.5"]




@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained 8x8 CNN's state dict and 40 random labelled images."""
    return untrained_cnn_files(tmp_path_factory.mktemp("ci"))


def scan(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["scan", str(files["model"]), "--data", str(files["data"]), "--out", str(out),
            *ARCH, *FLAGGING, *extra]


def on_disk(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_json_format_prints_one_document_that_is_the_report(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "json"
    code = cli.run(scan(files, out, "--format", "json"))
    printed = capsys.readouterr()
    document = json.loads(printed.out)  # the whole of stdout is one JSON document
    assert code == cli.EXIT_FLAGGED and document["flagged_labels"]
    assert document["report"] == {"json": str(out / "report.json"),
                                  "html": str(out / "report.html")}
    report = json.loads(Path(document["report"]["json"]).read_text(encoding="utf-8"))
    arrays = ("mask_shape", "pattern_shape", "mask", "pattern")
    trimmed = dict(report, labels=[{k: v for k, v in entry.items() if k not in arrays}
                                   for entry in report["labels"]])
    assert {k: v for k, v in document.items() if k != "report"} == trimmed
    assert all(set(arrays).isdisjoint(entry) for entry in document["labels"])
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    assert [e.message for e in validator.iter_errors(document)] == []
    assert [e.message for e in validator.iter_errors(report)] == []
    assert "BACKDOOR: label(s)" in printed.err and "report:" in printed.err  # notes: stderr
    assert document["verdict"] == "backdoor" and "confirmation" in document


def test_fail_on_never_exits_0_on_a_flagged_model(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(scan(files, tmp_path / "gate")) == cli.EXIT_FLAGGED
    flagged = on_disk(tmp_path / "gate")["flagged_labels"]
    assert flagged
    assert cli.run(scan(files, tmp_path / "collect", "--fail-on", "never")) == cli.EXIT_CLEAN
    assert on_disk(tmp_path / "collect")["flagged_labels"] == flagged  # the same verdict
    assert "BACKDOOR: label(s)" in capsys.readouterr().out


def test_quiet_prints_nothing_on_stdout(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli.run(scan(files, tmp_path / "quiet", "--quiet")) == cli.EXIT_FLAGGED
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert on_disk(tmp_path / "quiet")["flagged_labels"]
    code = cli.run(scan(files, tmp_path / "quiet_json", "-q", "--format", "json",
                        "--fail-on", "never"))
    printed = capsys.readouterr()
    assert code == cli.EXIT_CLEAN and printed.err == ""
    assert json.loads(printed.out)["report"]["json"] == str(tmp_path / "quiet_json/report.json")


def test_errors_still_exit_2_and_print_no_document(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = scan(files, tmp_path / "bad", "--format", "json", "--fail-on", "never", "--quiet")
    argv[argv.index("--data") + 1] = str(tmp_path / "missing.npz")
    assert cli.run(argv) == cli.EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith("neuralcleanse: error: ")
    for flag, value in (("--format", "yaml"), ("--fail-on", "sometimes"),
                        ("--verdict", "median"), ("--confirm-seeds", "0")):
        assert cli.run(scan(files, tmp_path / "bad", flag, value)) == cli.EXIT_USAGE
        assert capsys.readouterr().out == ""


def test_long_lines_are_not_wrapped_outside_a_terminal(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path.joinpath(*["a_rather_long_folder_name"] * 5, "report")
    assert len(str(out)) > 100
    cli.run(scan(files, out, "--restarts", "2"))  # a table wider than 80 columns
    lines = capsys.readouterr().out.splitlines()
    assert f"report: {out / 'report.html'} (JSON: {out / 'report.json'})" in lines
    verdict = next(line for line in lines if line.startswith("BACKDOOR: label(s) "))
    assert verdict.endswith("(anomaly index > 0.5, on the median of 2 runs)")
    header = next(line for line in lines if "L1 norm" in line)
    assert "attack success" in header and "flagged in runs" in header
    assert len(header) > 80
    rows = [line for line in lines if line.startswith(("│", "|")) and "/2" in line]
    assert len(rows) == 3  # one line per scanned label


def test_help_documents_the_pipeline_flags(capsys: pytest.CaptureFixture[str]) -> None:
    cli.run(["scan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--format", "--fail-on", "--quiet", "--verdict", "--confirm-seeds"):
        assert flag in text
    assert "never" in text and "json" in text
    assert "suspicious" in text and "SUSPICIOUS" in text and "paper" in text


@pytest.mark.parametrize("command", ["scan", "mitigate", "filter", "scan-many"])
def test_help_paragraphs_wrap_to_the_terminal(command: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The docstrings are written to a 100-column margin; at 60 columns no line of the help's
    prose may end early where the docstring's line did (a ragged, half-empty line)."""
    import typer

    doc = typer.main.get_command(cli.app).commands[command].help
    assert "\n\n" in doc and all("\n" not in p for p in doc.split("\n\n"))
    monkeypatch.setenv("COLUMNS", "60")
    cli.run([command, "--help"])
    out = capsys.readouterr().out
    prose = out.split("╭")[0].splitlines()[3:]  # after the usage line, before the panels
    body = [line.rstrip() for line in prose if line.strip()]
    assert len(body) >= 4
    # every line but each paragraph's last is filled to within a word of the width
    paragraphs: list[list[str]] = [[]]
    for line in prose:
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    for paragraph in paragraphs:
        for line in paragraph[:-1]:
            assert len(line) >= 45, (command, line)
